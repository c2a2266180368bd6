"""The real-time protocols: the native WebSocket protocol and its room verbs (``ws.py``,
``ws_rooms.py``), and Engine.IO v4 / Socket.IO v5 (``engineio*.py``, ``socketio*.py``).

They sit on the HTTP layer's state and perimeter (``dramaverse/http``) and talk to the actors;
the close codes they send are ``dramaverse/domain/close_codes.py``.
"""
