"""Error handling that needs a raw ASGI conversation: a client that leaves mid-body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient


# A multipart upload cut short (what wrk does to requests in flight when a run ends); JSON
# bodies cut short get FastAPI's own 400 for unreadable bodies.
@pytest.mark.parametrize(
    "path, content_type, start, detail",
    [
        ("/v1/encode", b"multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="files"; '
         b'filename="a.png"\r\n\r\n\x89PNG', "the client disconnected before sending the whole body"),
        ("/v1/decode", b"application/json", b'{"latents": [[0.0, ', "There was an error parsing the body"),
    ],
)  # fmt: skip
def test_client_that_disconnects_mid_body_is_a_400_not_a_500(
    client: TestClient, path: str, content_type: bytes, start: bytes, detail: str
) -> None:
    messages = iter([{"type": "http.request", "body": start, "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", content_type), (b"host", b"testserver")],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
    }  # fmt: skip

    async def call() -> None:
        await client.app(scope, receive, send)

    client.portal.call(call)  # on the app's own event loop, where its batchers live
    assert sent[0]["status"] == 400
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert body == {"detail": detail}
