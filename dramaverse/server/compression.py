"""permessage-deflate without per-connection compression state.

Browsers always offer permessage-deflate. With context takeover (wsproto's default, which
Hypercorn uses), every connection keeps a zlib deflate stream (~256 KB with the default window
and memory level) and an inflate stream (~40 KB) for its whole life: at 10,000 idle sockets that
is gigabytes. Negotiating ``server_no_context_takeover`` and ``client_no_context_takeover``
(RFC 7692 lets a server add the latter even when the client did not ask) makes wsproto create
the zlib objects per message and drop them afterwards, so an idle connection costs nothing for
compression. Our frames are small JSON objects that compress well on their own, so little
ratio is lost.

Hypercorn builds its extension list inside ``hypercorn.protocol.ws_stream`` with a bare
``PerMessageDeflate()``; :func:`dramaverse.server.fence.install` points that one name at
:class:`StatelessPerMessageDeflate`.
"""

from __future__ import annotations

from typing import Any

from wsproto.extensions import PerMessageDeflate


class StatelessPerMessageDeflate(PerMessageDeflate):
    def __init__(self, **options: Any) -> None:
        options.setdefault("client_no_context_takeover", True)
        options.setdefault("server_no_context_takeover", True)
        super().__init__(**options)
