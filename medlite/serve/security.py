"""What keeps the service safe on a hospital network: loopback by default, a token
everywhere else, and a cap on request bodies before anything is parsed."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from urllib.parse import parse_qs

from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medlite.errors import ConfigError

TOKEN_ENV = "MEDLITE_TOKEN"
TOKEN_COOKIE = "medlite_token"
#: Reachable without the token: the sign-in form itself.
OPEN_PATHS = ("/login",)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token_file: Path | None, environ=os.environ) -> str | None:
    """The access token: from ``token_file``, else the ``MEDLITE_TOKEN`` variable.

    Raises:
        ConfigError: ``host`` is not loopback and there is no token (or it is short), or the
            token file cannot be read.
    """
    token = None
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc.strerror})") \
                from exc
    elif environ.get(TOKEN_ENV):
        token = environ[TOKEN_ENV].strip()
    if token is not None and len(token) < 16:
        raise ConfigError("access token: at least 16 characters (e.g. `python -c 'import "
                          "secrets; print(secrets.token_urlsafe(32))'`)")
    if token is None and not is_loopback(host):
        raise ConfigError(f"--host {host}: serving beyond this machine needs an access token "
                          f"(--token-file FILE or the {TOKEN_ENV} environment variable)")
    return token


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie") or ""
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


_LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>medlite: sign in</title><link rel="stylesheet" href="/static/app.css"></head>
<body><main class="narrow"><h1>medlite</h1><p>This service needs its access token.</p>
<form method="post" action="/login"><label>Access token
<input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></main></body></html>"""


class TokenGate:
    """Refuse (401) every request without the token, given as ``Authorization: Bearer`` or
    the cookie set by the sign-in form at ``/login``. No token configured: everything passes
    (the CLI only allows that on loopback)."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token

    def _valid(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in OPEN_PATHS and scope.get("method") == "POST":
            return await self._login(scope, receive, send)
        if path in OPEN_PATHS:
            return await HTMLResponse(_LOGIN_PAGE)(scope, receive, send)
        bearer = _header(scope, b"authorization") or ""
        given = bearer[7:] if bearer.lower().startswith("bearer ") else None
        if self._valid(given) or self._valid(_cookie(scope, TOKEN_COOKIE)):
            return await self.app(scope, receive, send)
        if path.startswith("/api") or path == "/openapi.json":
            response = JSONResponse({"detail": "missing or wrong access token"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        else:
            response = HTMLResponse(_LOGIN_PAGE, status_code=401)
        await response(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > 4096:
                break
            if not message.get("more_body"):
                break
        given = (parse_qs(body.decode("latin-1")).get("token") or [None])[0]
        if not self._valid(given):
            return await HTMLResponse(_LOGIN_PAGE, status_code=401)(scope, receive, send)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict",
                            secure=scope.get("scheme") == "https")
        await response(scope, receive, send)


class BodySizeLimit:
    """Answer 413 to a request whose body is larger than ``max_bytes``, before it is parsed:
    at once from its Content-Length, or as soon as a streamed body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return JSONResponse({"detail": f"request body larger than "
                                       f"{self.max_bytes / 2 ** 20:g} MiB"}, status_code=413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large()(scope, receive, send)
        if declared is not None:  # the HTTP server stops reading at the declared length
            return await self.app(scope, receive, send)
        # A streamed body: read it (up to the limit) before the application sees any of it.
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large()(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
