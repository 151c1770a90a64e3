"""Optional API keys (VAE_API_KEYS): when set, every `/v1/*` request needs one of them.

Checked in a pure-ASGI middleware, before routing and before the body is read, so a request
without a valid key learns nothing else (not even which paths exist) and costs no upload.
Health probes, /metrics, /docs and the page stay open.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Security, params
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.server.proxy import route_path

PROTECTED_PREFIX = "/v1"
MISSING = "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
NOT_BEARER = "the Authorization header must be `Bearer <key>`; or send the key as `X-API-Key: <key>`"
INVALID = "invalid API key"


def digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of the key lengths too.
    return hashlib.sha256(key.encode()).digest()


def key_matches(given: str, key_digests: list[bytes]) -> bool:
    """Constant time: every key is compared, whether or not an earlier one matched."""
    given_digest = digest(given)
    found = False
    for key_digest in key_digests:
        found |= hmac.compare_digest(given_digest, key_digest)
    return found


def given_key(headers: Headers) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key`; raises ValueError for another
    Authorization scheme with no X-API-Key."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        if not headers.get("x-api-key"):
            raise ValueError(NOT_BEARER)
    return headers.get("x-api-key") or None


def protected_path(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def unauthorized(detail: str, error: str | None) -> JSONResponse:
    challenge = 'Bearer realm="vaeserve"' + (f', error="{error}"' if error else "")
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": challenge})


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: list[SecretStr]) -> None:
        self.app = app
        self.key_digests = [digest(key.get_secret_value()) for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not protected_path(route_path(scope)):
            await self.app(scope, receive, send)  # CORS preflights carry no credentials
            return
        try:
            key = given_key(Headers(scope=scope))
        except ValueError as e:
            await unauthorized(str(e), "invalid_request")(scope, receive, send)
            return
        if key is None:
            await unauthorized(MISSING, None)(scope, receive, send)
        elif not key_matches(key, self.key_digests):
            await unauthorized(INVALID, "invalid_token")(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def key_schemes(keys: list[SecretStr]) -> list[params.Depends]:
    """The two ways to send a key, as dependencies of the /v1 routers when keys are set, so
    FastAPI documents them on every /v1 operation and /docs's Authorize button sends the key.
    They only read the headers; `ApiKeyMiddleware` has checked the key before routing."""
    if not keys:
        return []
    bearer = HTTPBearer(scheme_name="bearer", description="An API key as a bearer token", auto_error=False)
    header = APIKeyHeader(name="X-API-Key", scheme_name="apiKey", description="An API key", auto_error=False)
    return [Security(bearer), Security(header)]
