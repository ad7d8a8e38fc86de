"""Open a moment in the user's video player.

CLIPTOOL_PLAYER holds a command template, split like a shell line, with {path}, {t} or {time}
(seconds, 3 decimals), {ms} (whole milliseconds) and {timecode} (HH:MM:SS.mmm) filled in per
argument, so a path with spaces stays one argument; without {path} the path is appended, and
mpv or VLC named without a time get their own start option. Otherwise mpv, then VLC, then the
desktop's opener (xdg-open, open), which cannot start at a time.

A player that ends with a failure status within `SETTLE_SECONDS` (xdg-open without a handler,
a wrong command) is an error naming its status and its last line on stderr; one still running
then, or one that handed the file on and ended well, has started.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from cliptool.errors import CliptoolError, UsageError, printable

PLAYER_ENV = "CLIPTOOL_PLAYER"
SETTLE_SECONDS = 1.0  # how long a player is watched for an early failure
_TIME_KEYS = ("{t}", "{time}", "{ms}", "{timecode}")


class NoPlayerError(CliptoolError):
    """No player is installed or configured."""


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
    values = {"path": path, "t": f"{t:.3f}", "time": f"{t:.3f}", "ms": str(int(round(t * 1000))),
              "timecode": format_time(t)}
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
        name = Path(argv[0]).name
        if any(key in template for key in _TIME_KEYS):
            return PlayerCommand(name, [program, *argv[1:]], True)
        start = _start_option(name, t)
        if start is not None:  # mpv or VLC named without a time: their own start option
            return PlayerCommand(name, [program, start, *argv[1:]], True)
        return PlayerCommand(name, [program, *argv[1:]], False)
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
    raise NoPlayerError(f"no video player found: install mpv or VLC, or set {PLAYER_ENV} "
                        "(e.g. \"mpv --start={t} {path}\")")


def _start_option(name: str, t: float) -> str | None:
    if name.startswith("mpv"):
        return f"--start={t:.3f}"
    if name.startswith(("vlc", "cvlc")):
        return f"--start-time={t:.3f}"
    return None


def play(path: str, t: float, env: dict[str, str] | None = None) -> PlayerCommand:
    """Starts the player on `path` at `t`, detached (it outlives cliptool); returns what it ran.
    CliptoolError when it cannot start or fails at once (its status and its own words)."""
    if not Path(path).is_file():
        raise UsageError(f"no such video: {printable(path)}")
    command = player_command(path, t, env)
    with tempfile.TemporaryFile() as said:
        try:
            proc = subprocess.Popen(command.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=said, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise CliptoolError(f"cannot start {command.name}: {exc.strerror or exc}") from None
        try:
            status = proc.wait(SETTLE_SECONDS)
        except subprocess.TimeoutExpired:  # still playing: reap it whenever it ends (no zombie)
            threading.Thread(target=proc.wait, name="cliptool-player-reaper", daemon=True).start()
            return command
        if status != 0:
            said.seek(0)
            lines = [line.strip() for line in said.read()[-4096:].decode(errors="replace").splitlines() if line.strip()]
            why = f": {printable(lines[-1])}" if lines else ""
            raise CliptoolError(f"the player {command.name} failed (exit status {status}){why}")
    return command
