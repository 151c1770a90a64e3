"""Serving under a path prefix behind a proxy (VAE_ROOT_PATH)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


def route_path(scope: Scope) -> str:
    """The request path within the app: `path` without the `root_path` prefix."""
    path, root_path = scope["path"], scope.get("root_path", "")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path[len(root_path) :] or "/"
    return path


class RootPath:
    """Pure-ASGI middleware for an app served at `root_path` (e.g. /vae) behind a proxy that
    strips the prefix, or keeps it. Sets the ASGI `root_path` and, as the ASGI spec wants,
    a `path` that includes it, so routing, absolute links, /docs and the OpenAPI `servers` all
    name the public URL. A request without the prefix (a probe sent straight to the replica)
    is served as if it had it."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope["path"]
            if not (path == self.root_path or path.startswith(self.root_path + "/")):
                scope["path"] = self.root_path + path
                scope["raw_path"] = self.root_path.encode() + (scope.get("raw_path") or path.encode())
            scope["root_path"] = self.root_path
        await self.app(scope, receive, send)
