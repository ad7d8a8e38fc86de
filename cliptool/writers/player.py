"""Open a moment in the user's video player.

CLIPTOOL_PLAYER holds a command template, split like a shell line, with {path}, {t} (seconds,
3 decimals), {ms} (whole milliseconds) and {timecode} (HH:MM:SS.mmm) filled in per argument, so a
path with spaces stays one argument; without {path} the path is appended. Otherwise mpv, then
VLC, then the desktop's opener (xdg-open, open), which cannot start at a time.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cliptool.errors import CliptoolError, UsageError, printable

PLAYER_ENV = "CLIPTOOL_PLAYER"


@dataclass
class PlayerCommand:
    name: str  # what to tell the user: "mpv", "vlc", "xdg-open", or CLIPTOOL_PLAYER's program
    argv: list[str]
    seeks: bool  # whether it starts at the time


def _fill(template: str, path: str, t: float) -> list[str]:
    from cliptool.media.timecode import format_time

    try:
        parts = shlex.split(template)
    except ValueError as exc:
        raise UsageError(f"{PLAYER_ENV} is not a valid command line: {exc}") from None
    if not parts:
        raise UsageError(f"{PLAYER_ENV} is empty")
    values = {"path": path, "t": f"{t:.3f}", "ms": str(int(round(t * 1000))), "timecode": format_time(t)}
    argv = []
    for part in parts:
        for key, value in values.items():
            part = part.replace("{" + key + "}", value)
        argv.append(part)
    if not any("{path}" in p for p in parts):
        argv.append(path)
    return argv


def player_command(path: str, t: float, env: dict[str, str] | None = None) -> PlayerCommand:
    """The command that opens `path` at `t` seconds; CliptoolError when there is no player."""
    env = dict(os.environ) if env is None else env
    template = env.get(PLAYER_ENV, "").strip()
    if template:
        argv = _fill(template, path, t)
        program = shutil.which(argv[0], path=env.get("PATH"))
        if program is None:
            raise UsageError(f"{PLAYER_ENV}: no such program: {argv[0]}")
        return PlayerCommand(Path(argv[0]).name, [program, *argv[1:]], "{t}" in template or "{ms}" in template
                             or "{timecode}" in template)
    search = env.get("PATH")
    if (mpv := shutil.which("mpv", path=search)) is not None:
        return PlayerCommand("mpv", [mpv, f"--start={t:.3f}", "--", path], True)
    for vlc_name in ("vlc", "cvlc"):
        if (vlc := shutil.which(vlc_name, path=search)) is not None:
            return PlayerCommand("vlc", [vlc, f"--start-time={t:.3f}", path], True)
    if sys.platform == "darwin" and (opener := shutil.which("open", path=search)) is not None:
        return PlayerCommand("open", [opener, path], False)
    if (opener := shutil.which("xdg-open", path=search)) is not None:
        return PlayerCommand("xdg-open", [opener, path], False)
    raise CliptoolError(f"no video player found: install mpv or VLC, or set {PLAYER_ENV} "
                        "(e.g. \"mpv --start={t} {path}\")")


def play(path: str, t: float, env: dict[str, str] | None = None) -> PlayerCommand:
    """Starts the player on `path` at `t`, detached (it outlives cliptool); returns what it ran."""
    if not Path(path).is_file():
        raise UsageError(f"no such video: {printable(path)}")
    command = player_command(path, t, env)
    try:
        subprocess.Popen(command.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError as exc:
        raise CliptoolError(f"cannot start {command.name}: {exc.strerror or exc}") from None
    return command
