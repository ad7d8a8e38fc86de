"""Starts the user's own video player at a time: $CLIPTOOL_PLAYER, else mpv, VLC, or the
desktop's opener (which cannot seek)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading

PLAYER_ENV = "CLIPTOOL_PLAYER"


def player_command(path: str, t: float) -> tuple[list[str], str] | None:
    """(argv, player name) for playing `path` from `t` seconds; None when no player is found.

    CLIPTOOL_PLAYER is a command line; `{path}` and `{time}` in it are replaced, else the path
    is appended (and for mpv or vlc their start option added)."""
    custom = os.environ.get(PLAYER_ENV, "").strip()
    if custom:
        argv = shlex.split(custom)
        if not argv:
            return None
        name = os.path.basename(argv[0])
        if any("{path}" in a or "{time}" in a for a in argv):
            return [a.replace("{path}", path).replace("{time}", f"{t:.3f}") for a in argv], name
        return argv + _start_args(name, t) + [path], name
    for name in ("mpv", "vlc"):
        exe = shutil.which(name)
        if exe:
            return [exe, *_start_args(name, t), path], name
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    exe = shutil.which(opener)
    return ([exe, path], opener) if exe else None


def _start_args(name: str, t: float) -> list[str]:
    if name.startswith("mpv"):
        return [f"--start={t:.3f}"]
    if name.startswith("vlc") or name.startswith("cvlc"):
        return [f"--start-time={t:.3f}"]
    return []


def open_in_player(path: str, t: float) -> str:
    """Starts the player, detached; returns its name. Raises OSError or LookupError."""
    found = player_command(path, t)
    if found is None:
        raise LookupError("no video player found (install mpv or VLC, or set CLIPTOOL_PLAYER)")
    argv, name = found
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    threading.Thread(target=proc.wait, name="cliptool-player-reaper", daemon=True).start()  # no zombie
    return name
