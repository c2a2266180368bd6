"""Running several worker processes on one port (``serve --workers N``): the worker's side.

The supervisor itself is ``dramaverse/supervisor.py``; it imports the runtime, so what the
runtime needs of the worker layout lives here, below both (no import cycle).
"""
