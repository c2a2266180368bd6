"""The server layer: everything that reaches into Hypercorn's internals, fenced in one place.

Hypercorn serves the application; the modules here replace or wrap a few of its private
functions, each for a measured or a safety reason given in its docstring:

- ``read_loop``: the connection's read loop, and where a claimed WebSocket leaves for ``direct_ws``;
- ``send_coalescing``: one socket write per small HTTP/1.1 response;
- ``compression``: permessage-deflate without per-connection zlib state;
- ``keepalive_timer``: an idle keep-alive connection keeps its timer;
- ``boundary``: nothing one connection does ends the server.

None of them patches anything when imported: :func:`dramaverse.server.fence.install` is the one
entry point. It checks that the installed Hypercorn is the one the patches were written for and
installs them all, or, when something differs, leaves Hypercorn plain but for the connection
boundary and says so in one warning.
"""
