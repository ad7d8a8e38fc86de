"""Measuring helpers: child processes timed with their peak memory, medians, bare decoding, and
the cliptool of an earlier commit to compare with."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from cliptool.bench.corpus import REPO

def run_child(cmd: list[str], env: dict[str, str] | None = None, quiet: bool = True,
              capture: Path | None = None) -> tuple[float, int, int]:
    """Runs a command; returns (wall seconds, peak RSS in MB, exit code); RSS from wait4.

    Started with posix_spawn (no fork): a forked child's peak RSS would count the pages it
    shared with this (large) process until its exec. CPU seconds (user + system, all threads)
    are kept in LAST_CPU[0]; stdout goes to `capture` when given.
    """
    import tempfile

    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    with tempfile.NamedTemporaryFile(prefix="bench-stderr-", delete=False) as err:
        err_path = err.name
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    if capture is not None:
        actions.append((os.POSIX_SPAWN_OPEN, 1, str(capture), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    elif quiet:
        actions.append((os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0))
    if quiet:
        actions.append((os.POSIX_SPAWN_OPEN, 2, err_path, os.O_WRONLY | os.O_TRUNC, 0))
    exe = shutil.which(cmd[0]) or cmd[0]
    t0 = time.perf_counter()
    pid = os.posix_spawn(exe, [str(c) for c in cmd], full_env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    LAST_CPU[0] = usage.ru_utime + usage.ru_stime
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = Path(err_path).read_text(errors="replace")[-2000:]
        print(f"bench: {' '.join(map(str, cmd))} exited {code}:\n{tail}", file=sys.stderr)
    os.unlink(err_path)
    return wall, usage.ru_maxrss // 1024, code


LAST_CPU = [0.0]


def compile_code(code: Path) -> None:
    """Byte-compiles the cliptool package in `code`, as installing it does, so that the processes
    measured do not compile it from source each time where PYTHONDONTWRITEBYTECODE is set (it
    is on the machines this was built on: 0.2 s of every cold search)."""
    import compileall

    compileall.compile_dir(str(code / "cliptool"), quiet=1)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def video_facts(path: Path) -> dict[str, float]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = s.frames or 0
        duration = float(s.duration * s.time_base) if s.duration else c.duration / 1e6
        return {"width": s.codec_context.width, "height": s.codec_context.height, "frames": frames,
                "duration": duration, "mbps": path.stat().st_size * 8 / duration / 1e6}


def bare_decode_pyav(path: Path) -> tuple[float, float]:
    """Decode every frame with PyAV, 2 threads, no conversion (the floor for any indexer).
    Returns (wall, CPU) seconds."""
    import av

    c0 = time.process_time()
    t0 = time.perf_counter()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.thread_count = 2
        for _ in c.decode(s):
            pass
    return time.perf_counter() - t0, time.process_time() - c0


def bare_decode_ffmpeg(path: Path) -> float | None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    t0 = time.perf_counter()
    subprocess.run([exe, "-v", "error", "-threads", "2", "-i", str(path), "-f", "null", "-"], check=True)
    return time.perf_counter() - t0


def vmhwm_mb() -> float:
    """This process's peak resident memory (VmHWM), MB."""
    import re

    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def baseline_code(out: Path, commit: str) -> Path | None:
    """The cliptool package of an earlier commit, extracted (once) from this repository's git
    history into out/code-COMMIT; None when git cannot give it."""
    folder = out / f"code-{commit}"
    if (folder / "cliptool" / "__init__.py").is_file():
        compile_code(folder)
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "cliptool"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"bench: cannot extract cliptool at {commit} ({exc}); no before figures", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    tmp.replace(folder)
    compile_code(folder)
    return folder
