"""`python -m app.serve`: uvicorn serving the app, configured only by `VAE_*` settings.

The container runs this. On SIGTERM uvicorn stops accepting connections, lets in-flight
requests finish (up to VAE_SHUTDOWN_TIMEOUT seconds), runs the app's shutdown, and exits.
"""

from __future__ import annotations

import uvicorn

from app.main import load_settings
from app.server.protocol import BoundedHttpToolsProtocol


def main() -> None:
    settings = load_settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        http=BoundedHttpToolsProtocol,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=settings.shutdown_timeout,
        access_log=False,  # the app writes its own request line (app.server.observability)
        server_header=False,
    )


if __name__ == "__main__":
    main()
