"""The HTTP protocol the service runs under uvicorn: httptools, with h11's bound on request heads.

httptools, a C parser, costs about half the CPU per request of h11, uvicorn's pure-Python one
(docs/benchmarks.md). But it buffers a request line and headers without limit, where h11 stops
at 16 kB; a client trickling headers could grow one connection's buffer for ever. This keeps
h11's bound and answer: a request head over `MAX_HEAD_BYTES` gets 400 and the connection closes.

Used by `python -m app.serve`; with the uvicorn CLI: `--http app.server.protocol:BoundedHttpToolsProtocol`.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024  # h11's default (h11_max_incomplete_event_size)
INVALID = "Invalid HTTP request received."  # uvicorn's answer to what its parser rejects


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_head = False  # a request has begun and its headers are not complete
        self.head_bytes = 0  # bytes received while in a head

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        self.head_bytes = 0

    def on_headers_complete(self) -> None:
        self.in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counts whole reads: a read that also holds the end of the previous request counts in
        # full, which can only bring the 400 a little early for a pipelined request.
        if self.in_head and not self.transport.is_closing():
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.logger.warning(INVALID)
                self.send_400_response(INVALID)
