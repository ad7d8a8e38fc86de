"""`cliptool serve`: a local web app over an index (see app.py for the app, routes_*.py for the
routes and security.py for the checks in front of them). Importing this package is light;
`serve` and `create_app` import FastAPI and uvicorn when called."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# Seconds an idle connection is kept. Longer than clients keep theirs (httpx 5 s, most pools
# under a minute), so a client never sends a request on a connection the server is just closing
# (that request gets a connection reset): uvicorn's 5 s default raced httpx's 5 s.
KEEP_ALIVE = 65


def create_app(index_dir: Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None) -> Any:
    from cliptool.serve.app import create_app as make

    return make(Path(index_dir), host=host, port=port, token=token)


def url_for(host: str, port: int, token: str | None) -> str:
    from cliptool.serve.security import WILDCARDS

    shown = host.strip("[]")
    if shown in WILDCARDS:
        shown = socket.gethostname() or "127.0.0.1"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def prepare(host: str, token: str | None) -> tuple[str | None, bool]:
    """(the token to use, whether it was generated): a non-loopback host always gets one."""
    from cliptool.serve.security import is_loopback, new_token

    if token is not None and not token.strip():
        from cliptool.errors import UsageError

        raise UsageError("--token must not be empty")
    if token is None and not is_loopback(host):
        return new_token(), True
    return token, False


def server_config(app: Any, host: str, port: int) -> Any:
    """The uvicorn.Config `serve` runs the app with (tests and the soak run the same)."""
    import uvicorn

    # h11, not httptools where that is installed: h11 hands an absolute-form target to the Host check whole
    return uvicorn.Config(app, host=host.strip("[]"), port=port, log_level="warning", access_log=False,
                          timeout_keep_alive=KEEP_ALIVE, server_header=False, lifespan="off", http="h11")


def serve(index_dir: Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: str | None = None,
          open_browser: bool = False, say: Callable[[str], None] | None = None,
          beside: Callable[[Callable[[], bool]], None] | None = None) -> None:
    """Runs the server until Ctrl-C. Prints the address (with the token, if any) first.

    beside: work to run with the server (the index watcher), given a function that says whether
    the server has stopped. The server then answers from a thread of its own and `beside` has
    the main thread, where Ctrl-C lands (a commit under way completes first); when it returns
    or raises, the server is stopped."""
    import uvicorn

    from cliptool.errors import CliptoolError

    say = say or (lambda m: print(m, flush=True))
    token, generated = prepare(host, token)
    app = create_app(index_dir, host=host, port=port, token=token)
    try:  # a taken port or a bad address: one line, before anything is printed as running
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        raise CliptoolError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server = uvicorn.Server(server_config(app, host, port))
    url = url_for(host, port, token)
    say(f"cliptool serve: {url}")
    if generated:
        say(f"cliptool serve: bound to {host}, reachable from other machines; access token: {token}")
    print(f"serving the index at {index_dir}; Ctrl-C stops", file=sys.stderr, flush=True)
    if open_browser:
        local = url_for("127.0.0.1" if host.strip("[]") in ("0.0.0.0", "::") else host, port, token)

        def opener() -> None:
            import time
            import webbrowser

            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                webbrowser.open(local)

        threading.Thread(target=opener, name="cliptool-open", daemon=True).start()
    if beside is None:
        server.run()
        return
    thread = threading.Thread(target=server.run, name="cliptool-server", daemon=True)
    thread.start()
    try:
        beside(lambda: not thread.is_alive())
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    raise CliptoolError(f"the server at {url} stopped")  # `beside` returns only then


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "KEEP_ALIVE", "create_app", "serve", "server_config", "url_for"]
