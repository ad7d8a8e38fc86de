"""The web app's security checks, as one ASGI middleware in front of every route.

- Host header: on a loopback or a named-address bind, only that address and the loopback names
  (localhost, 127.0.0.1, ::1) are accepted (a DNS-rebinding page names its own host) -> 400.
  A wildcard bind (0.0.0.0, ::) accepts any Host; it always has a token.
- Token: when the server has one, every request must carry it: `Authorization: Bearer T`, the
  query parameter `token=T` (the page then keeps it in an HttpOnly, SameSite=Strict cookie and
  the address bar loses it), or that cookie -> 401 otherwise.
- Writes (any method but GET/HEAD/OPTIONS) from another origin are refused: an `Origin` header
  that is not this server's, or `Sec-Fetch-Site: cross-site` -> 403.
Every refusal is a one-line JSON body {"error": "..."}.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]], Awaitable[None]]

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARDS = {"0.0.0.0", "::", ""}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(bound: str) -> set[str] | None:
    """The Host names accepted for a bind address; None: any (a wildcard bind, token required)."""
    bound = bound.strip("[]").lower()
    if bound in WILDCARDS:
        return None
    return LOOPBACK_NAMES | {bound}


def host_name(header: str) -> str:
    """The name part of a Host header value ("[::1]:8765" -> "::1", "a:80" -> "a")."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else header
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(port: int) -> str:
    return f"cliptool_token_{port}"  # cookies ignore ports: one name per server


async def send_json(send: Callable[..., Awaitable[Any]], status: int, message: str,
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode() + b"\n"
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")] + (extra or [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: Host, token and cross-origin checks (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, bound_host: str, port: int, token: str | None) -> None:
        self.app = app
        self.hosts = allowed_hosts(bound_host)
        self.token = token
        self.cookie = cookie_name(port)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            name = k.decode("latin-1").lower()
            headers[name] = v.decode("latin-1") if name not in headers else headers[name] + ", " + v.decode("latin-1")
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            await send_json(send, 400, "bad Host header: this server answers only to its own address")
            return
        method = scope.get("method", "GET").upper()
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and origin.rstrip("/").lower() != f"{scope.get('scheme', 'http')}://{host}".lower():
                await send_json(send, 403, "cross-origin request refused")
                return
            if headers.get("sec-fetch-site", "").lower() == "cross-site":
                await send_json(send, 403, "cross-origin request refused")
                return
        if self.token is None:
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        cookie = _cookie(headers.get("cookie", ""), self.cookie)
        if not any(c is not None and secrets.compare_digest(c.encode(), self.token.encode())
                   for c in [bearer, cookie, *given]):
            await send_json(send, 401, "a token is required (Authorization: Bearer, ?token= or the cookie)",
                            [(b"www-authenticate", b'Bearer realm="cliptool"')])
            return
        if given and method in ("GET", "HEAD") and scope.get("path") == "/":
            # the page: keep the token in a cookie and take it out of the address bar
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = "/" + (f"?{rest}" if rest else "")
            cookie_value = f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            await send({"type": "http.response.start", "status": 303, "headers": [
                (b"location", location.encode()), (b"set-cookie", cookie_value.encode()),
                (b"content-length", b"0"), (b"cache-control", b"no-store")]})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None
