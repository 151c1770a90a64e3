"""A job is its HTTP request, kept and replayed through the app in-process: its result is, by
construction, the status, headers and bytes the synchronous call answers, for every operation
endpoint at once, with no code per route."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Scope

# Headers a job does not keep: credentials (the job keeps its owner instead), the preference
# that made it a job, and what the replay sets itself.
DROPPED = {b"authorization", b"x-api-key", b"cookie", b"prefer", b"content-length", b"transfer-encoding"}


def pack(head: dict[str, object], body: bytes) -> bytes:
    return json.dumps(head).encode() + b"\n" + body


def unpack(data: bytes) -> tuple[dict[str, object], bytes]:
    head, _, body = data.partition(b"\n")
    return json.loads(head), body


def latin1(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[name.decode("latin-1"), value.decode("latin-1")] for name, value in headers]


@dataclass
class Call:
    """An HTTP request as a job keeps it."""

    method: str
    path: str
    root_path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @classmethod
    def of(cls, scope: Scope, body: bytes) -> Call:
        headers = [(name, value) for name, value in scope["headers"] if name not in DROPPED]
        return cls(scope["method"], scope["path"], scope.get("root_path", ""), scope["query_string"], headers, body)

    def dumps(self) -> bytes:
        head = {
            "method": self.method,
            "path": self.path,
            "root_path": self.root_path,
            "query_string": self.query_string.decode("latin-1"),
            "headers": latin1(self.headers),
        }
        return pack(head, self.body)

    @classmethod
    def loads(cls, data: bytes) -> Call:
        head, body = unpack(data)
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in head["headers"]]  # type: ignore[union-attr]
        query = str(head["query_string"]).encode("latin-1")
        return cls(str(head["method"]), str(head["path"]), str(head["root_path"]), query, headers, body)

    def scope(self, app: object) -> Scope:
        headers = [*self.headers, (b"content-length", str(len(self.body)).encode())]
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": self.root_path,
            "query_string": self.query_string,
            "headers": headers,
            "client": None,
            "server": None,
            "state": {},
            "app": app,
        }


@dataclass
class Answer:
    """An HTTP response as a job keeps it."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def dumps(self) -> bytes:
        return pack({"status": self.status, "headers": latin1(self.headers)}, self.body)

    @classmethod
    def loads(cls, data: bytes) -> Answer:
        head, body = unpack(data)
        headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in head["headers"]]  # type: ignore[union-attr]
        return cls(int(head["status"]), headers, body)  # type: ignore[call-overload]

    def header(self, name: bytes) -> str | None:
        return next((v.decode("latin-1") for n, v in self.headers if n.lower() == name), None)


async def replay(target: ASGIApp, app: object, call: Call, cancelled: asyncio.Event) -> Answer:
    """`call` through `target` (the app below the job middleware, in `app`); once `cancelled`
    is set, the client counts as gone, as a disconnected client does."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": call.body, "more_body": False}
        await cancelled.wait()  # at once if set: what the batcher's check of the client sees
        return {"type": "http.disconnect"}

    status, headers, body = 500, [], bytearray()

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await target(call.scope(app), receive, send)
    return Answer(status, headers, bytes(body))
