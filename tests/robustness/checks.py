"""What every refusal in this suite must look like: the documented JSON error with the right
status, a message that says what was wrong, and no stack trace or server path."""

from __future__ import annotations

import httpx

from tests.deploy.support import ROOT

# What a leaked stack trace or server path looks like in a response body.
LEAKS = ("Traceback", 'File "', '.py"', ".py:", "site-packages", str(ROOT), "/tmp/", "/home/", "/usr/")


def assert_no_leak(text: str) -> None:
    leaked = [marker for marker in LEAKS if marker in text]
    assert not leaked, f"response leaks {leaked}: {text[:500]}"


def assert_error(response: httpx.Response, status: int, detail: str) -> str:
    """`response` is `{"detail": <message>}` with `status`, the message contains `detail`, and
    nothing leaks. Returns the message."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"detail"}, body
    assert detail in body["detail"], body["detail"]
    assert_no_leak(response.text)
    return body["detail"]
