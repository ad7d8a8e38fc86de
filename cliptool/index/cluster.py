"""Index on a Ray cluster: the per-video analysis runs in a pool of Ray actors.

The run plans locally (indexer: discover, skip, move, prune). Each video still to analyse
becomes a task for one of the actors, by its path: the workers read the videos, and the model
the driver resolved, from storage every node sees at the same paths. Each actor loads the
model once and runs `worker.analyse_file`, exactly what a local run does per file; the
results come back to the driver in the order they finish, and the driver commits them with
the local run's code. A worker (or its node) that dies mid-video loses nothing: its videos go
back to the queue and are analysed again on another actor, up to `TRIES` times, and only a
whole result is ever committed.

Ray is an optional extra (`pip install 'cliptool[cluster]'`): it is imported only here, and
this module only when `--ray` is given.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cliptool.config import IndexOptions
from cliptool.models.spec import ModelSpec
from cliptool.errors import ClusterError, CliptoolError, ModelUnavailableError, UsageError, one_line
from cliptool.index.worker import EXIT_HUNG, FileResult, Reporter, Todo, Watchdog, analyse_file

RAY_MISSING = "--ray needs Ray: pip install 'cliptool[cluster]'"
TRIES = 3  # analyses of one video before a worker dying under it counts as its failure
CPUS_PER_WORKER = 2  # one video's pass keeps about two cores busy: decoding, and the model
QUEUED_PER_WORKER = 2  # a worker's next video waits on it while the driver commits the last
START_TIMEOUT = 300.0  # seconds without any worker ready before the run gives up
CONNECT_TIMEOUT = 5.0


def import_ray() -> ModuleType:
    """The `ray` module, or a UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


def check_address(address: str) -> None:
    """Fails fast, in one line, on an address that is malformed or does not answer ("auto" is
    left to Ray, which says when this machine belongs to no cluster)."""
    import_ray()
    if address == "auto":
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host.strip("[]"), port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or one_line(exc)}") from None


def _host_port(address: str) -> tuple[str, int]:
    """HOST and PORT of "ray://HOST:PORT" or "HOST:PORT"; a UsageError for anything else."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray takes auto, ray://HOST:PORT or HOST:PORT, not {address!r}")
    return host, int(port)


def connect(address: str) -> bool:
    """Joins the Ray cluster at `address` as a driver, quietly; returns whether this call
    connected (False: this process was connected already, and that connection is used)."""
    ray = import_ray()
    if address != "auto":
        _host_port(address)
    if ray.is_initialized():
        return False
    check_address(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {one_line(exc)}") from None
    return True


@contextmanager
def connection(address: str) -> Iterator[None]:
    """Connected to the cluster at `address` while inside (an existing connection is kept)."""
    connected = connect(address)
    try:
        yield
    finally:
        if connected:
            import_ray().shutdown()


class _WorkerWatchdog(Watchdog):
    """A worker's per-file time limit: a decoder stuck in C ends the worker process (the
    driver, which owns the stores, then hands the video to another worker)."""

    def _hung(self, path: Path, st: os.stat_result | None) -> None:
        os._exit(EXIT_HUNG)


class AnalysisWorker:
    """A Ray actor's body: the model loaded once, then one video analysed per call."""

    def __init__(self, spec: ModelSpec, options: IndexOptions, threads: int, file_timeout: float) -> None:
        from cliptool.models.clip import ClipModel

        self.options = options
        self.file_timeout = file_timeout
        self.error: str | None = None
        self.model: Any = None
        try:
            self.model = ClipModel(spec, threads=threads)
        except CliptoolError as exc:
            self.error = str(exc)

    def ready(self) -> dict[str, Any]:
        """Waits for the model; says where this worker runs and whether its model loaded."""
        import ray

        if self.error is None:
            try:
                self.model.wait()
            except Exception as exc:  # noqa: BLE001 - reported to the driver, which ends the run
                self.error = one_line(exc)
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "error": self.error}

    def analyse(self, path: str, st: os.stat_result) -> FileResult:
        """`worker.analyse_file` for one video (its per-frame vectors stay here: nothing commits them)."""
        with _WorkerWatchdog(self.file_timeout, Path(), lambda _message: None) as watchdog:
            result = analyse_file(Path(path), st, None, self.model, self.options, watchdog)
        if result.analysed is not None:
            result.analysed.frame_vectors = {}
        elif not os.path.lexists(path):
            import ray

            result.error = (f"not found on the Ray node {ray.util.get_node_ip_address()} (every node must see "
                            "the videos at the same paths)")
        return result


@dataclass
class _Slot:
    """One actor of the pool and what it is busy with."""

    name: str
    actor: Any
    node_id: str
    cpus: float
    threads: int
    ready: bool = False
    alive: bool = True
    queued: int = 0


class RayPool:
    """A pool of `AnalysisWorker` actors on the cluster at `address`, sized to its CPUs: on
    each node one actor per `CPUS_PER_WORKER` CPUs (at least one), its model given half of
    those as threads, the decoder the rest, as a local run splits a machine. Use as a context
    manager: leaving it ends the actors (and the connection, if it made it)."""

    def __init__(self, address: str, spec: ModelSpec, options: IndexOptions, file_timeout: float,
                 report: Reporter) -> None:
        self.ray = import_ray()
        self.address = address
        self.spec = spec
        self.options = options
        self.file_timeout = file_timeout
        self.report = report
        self.retried = 0
        self._connected = False
        self._slots: list[_Slot] = []
        self._starting: dict[Any, _Slot] = {}  # ready() reference -> the actor it waits for
        self._count = 0
        self._actor_class: Any = None

    @property
    def size(self) -> int:
        """Actors started and not lost."""
        return sum(1 for s in self._slots if s.alive)

    def __enter__(self) -> RayPool:
        self._connected = connect(self.address)
        try:
            nodes = [n for n in self.ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
            if not nodes:
                raise ClusterError(f"the Ray cluster at {self.address} has no node with a free CPU")
            for node in nodes:
                cpus = float(node["Resources"]["CPU"])
                count = max(1, int(cpus // CPUS_PER_WORKER))
                for _ in range(count):
                    self._start(node["NodeID"], cpus / count, max(1, int(cpus / count) // 2))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for slot in self._slots:
            self._kill(slot)
        self._slots.clear()
        self._starting.clear()
        if self._connected:
            self.ray.shutdown()
            self._connected = False

    def _start(self, node_id: str, cpus: float, threads: int) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._count += 1
        if self._actor_class is None:
            self._actor_class = self.ray.remote(AnalysisWorker)
        remote = self._actor_class.options(
            num_cpus=cpus, max_restarts=0, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True),  # elsewhere if that node is gone
        )
        slot = _Slot(f"worker-{self._count}", remote.remote(self.spec, self.options, threads, self.file_timeout),
                     node_id, cpus, threads)
        self._slots.append(slot)
        self._starting[slot.actor.ready.remote()] = slot

    def _kill(self, slot: _Slot) -> None:
        slot.alive = False
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - gone already
            pass

    def _lose(self, slot: _Slot) -> None:
        """An actor died (or its node did): a new one takes its place, on that node if it is
        still there, else wherever the cluster has room."""
        if slot.alive:
            self._kill(slot)
            self._start(slot.node_id, slot.cpus, slot.threads)

    def _on_ready(self, ref: Any) -> None:
        slot = self._starting.pop(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayError:  # it died while starting: its node went, say
            self._lose(slot)
            return
        if info["error"]:
            raise ModelUnavailableError(f"a Ray worker on {info['node']} cannot load the model: {info['error']}")
        slot.ready = slot.alive

    def results(self, todo: Todo) -> Iterator[FileResult]:
        """Every file of `todo` analysed, in the order the workers finish them."""
        ray = self.ray
        waiting: deque[tuple[Path, os.stat_result, Any, int]] = deque((p, st, old, 0) for p, st, old in todo)
        running: dict[Any, tuple[_Slot, Path, os.stat_result, Any, int]] = {}
        last_ready = time.monotonic()
        while waiting or running:
            depth = 1 if self._starting else QUEUED_PER_WORKER  # the first one ready must not take them all
            for slot in self._slots:
                while slot.ready and slot.alive and slot.queued < depth and waiting:
                    path, st, old, tries = waiting.popleft()
                    ref = slot.actor.analyse.options(name=f"analyse {path.name}").remote(str(path), st)
                    running[ref] = (slot, path, st, old, tries)
                    slot.queued += 1
            if not running and not self._starting:
                raise ClusterError("no Ray worker is left to analyse videos on")
            done, _ = ray.wait([*running, *self._starting], num_returns=1, timeout=1.0)
            if not done:
                if not running and time.monotonic() - last_ready > START_TIMEOUT:
                    raise ClusterError(f"no Ray worker could start within {START_TIMEOUT:g} s "
                                       "(does the cluster have a free CPU?)")
                continue
            ref = done[0]
            if ref in self._starting:
                self._on_ready(ref)
                last_ready = time.monotonic()
                continue
            slot, path, st, old, tries = running.pop(ref)
            slot.queued -= 1
            try:
                result: FileResult = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised in the worker around the analysis
                yield FileResult(path, st, old, error=f"Ray worker: {one_line(exc.cause or exc)}", remember=True)
                continue
            except ray.exceptions.RayError as exc:  # the actor, its process or its node died
                self._lose(slot)
                if tries + 1 < TRIES:
                    self.retried += 1
                    self.report(f"warning: a Ray worker died analysing {path}; analysing it again "
                                f"({one_line(exc)})")
                    waiting.appendleft((path, st, old, tries + 1))
                else:
                    yield FileResult(path, st, old, remember=True,
                                     error=f"a Ray worker died analysing it, {TRIES} times ({one_line(exc)})")
                continue
            result.old = old
            result.worker = slot.name
            yield result
