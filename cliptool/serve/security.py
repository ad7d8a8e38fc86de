"""The web app's security checks, as one ASGI middleware in front of every route.

- Host header: exactly one, parsed strictly as `host[:port]` (parse_host: an IPv4 dotted quad,
  a bracketed IPv6 address or a DNS name without a trailing dot; a port of digits only; no
  userinfo, lists, spaces or paths). On a loopback or a named-address bind the host must be
  that address or a loopback name (localhost, 127.0.0.1, ::1; a DNS-rebinding page names its
  own host) and a port, if given, the server's. A request target in absolute form
  (`GET http://host:port/path`) must name an allowed host too, and anything else that is not a
  path is refused. -> 400. A wildcard bind (0.0.0.0, ::) accepts any well-formed Host (its
  name and the port a client sees are unknown: forwarding, proxies); it always has a token.
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
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

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
    try:
        bound = ipaddress.ip_address(bound).compressed
    except ValueError:
        pass
    if bound in WILDCARDS:
        return None
    return LOOPBACK_NAMES | {bound}


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>{_LABEL}(?:\.{_LABEL})*))(?::(?P<port>[1-9][0-9]{{0,4}}))?")
_ABSOLUTE = re.compile(rb"https?://(?P<authority>[^/?#]*)(?P<path>/[^#]*)?", re.IGNORECASE)


def parse_host(value: str) -> tuple[str, int | None] | None:
    """(name, port) of a Host value in the strict form `host[:port]`, or None if it is not one.

    The name comes back lower-cased, an IPv6 address without brackets in its compressed form
    ("[::1]:8765" -> ("::1", 8765)); an all-digit name must be a dotted-quad IPv4 address."""
    match = _HOST.fullmatch(value.lower())
    if match is None:
        return None
    port = int(match["port"]) if match["port"] else None
    if port is not None and port > 65535:
        return None
    try:
        if match["v6"] is not None:
            return ipaddress.IPv6Address(match["v6"]).compressed, port
        if re.fullmatch(r"[0-9.]+", match["name"]):
            return str(ipaddress.IPv4Address(match["name"])), port
    except ValueError:
        return None
    return match["name"], port


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
        self.port = port
        self.token = token
        self.cookie = cookie_name(port)

    def host_problem(self, value: str) -> str | None:
        """Why a Host value (or an absolute-form target's authority) is refused (one line); None: accepted."""
        parsed = parse_host(value)
        if parsed is None:
            return f"bad Host header: not a host[:port]: {value[:100]!r}"
        name, port = parsed
        if self.hosts is None:
            return None
        if name not in self.hosts or (port is not None and port != self.port):
            return f"bad Host header: this server answers only to its own address (port {self.port}), not {value[:100]!r}"
        return None

    def target_problem(self, scope: Scope) -> str | None:
        """Checks a request target that is not a path: `http://host:port/path` must name an allowed
        host (the scope is then given the path alone); anything else (`*`, authority form) is refused."""
        raw = scope.get("raw_path") or scope.get("path", "/").encode("latin-1")
        if raw.startswith(b"/"):
            return None
        match = _ABSOLUTE.fullmatch(raw)
        if match is None:
            return "bad request target: it must be a path (or http://this-server/path)"
        problem = self.host_problem(match["authority"].decode("latin-1"))
        if problem is not None:
            return problem.replace("bad Host header", "bad request target", 1)
        path = match["path"] or b"/"
        scope["raw_path"] = path
        scope["path"] = unquote(path.decode("latin-1"))
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        hosts_given = 0
        for k, v in scope.get("headers", []):
            name = k.decode("latin-1").lower()
            hosts_given += name == "host"
            headers[name] = v.decode("latin-1") if name not in headers else headers[name] + ", " + v.decode("latin-1")
        host = headers.get("host", "")
        problem = "bad Host header: one is required" if hosts_given != 1 else self.host_problem(host)
        if problem is None:
            problem = self.target_problem(scope)
        if problem is not None:
            await send_json(send, 400, problem)
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
