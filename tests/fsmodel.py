"""What a process did to the files of one folder, read from `strace`, replayed on a model of a
file system that keeps, beside what a process sees, what a crash would leave: each file's
content as of its last fsync/fdatasync and each folder's entries as of its last fsync (a file
never synced is empty; a name never made durable is absent). Used by test_durable.py to check
the order of writes, syncs and renames, and to open what a crash at any moment would leave."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SYSCALLS = ("openat,open,creat,write,pwrite64,writev,pwritev,lseek,ftruncate,fsync,fdatasync,rename,renameat,"
            "renameat2,mkdir,mkdirat,unlink,unlinkat,rmdir,link,linkat,sendfile,copy_file_range")

BLOB_BYTES = 1 << 20

# LevelDB's own folders: their names (logs, tables, MANIFEST, CURRENT) are taken as durable in
# the order they change. Which of its files LevelDB syncs, and when, is its own guarantee; the
# model keeps their contents to what was synced, and every other folder's names to its syncs.
IMMEDIATE_NAMES = (".ldb",)

_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)(<[^>]*>)?")


@contextmanager
def ram_folder(fallback: Path) -> Iterator[Path]:
    """A new folder on a RAM file system where there is one, else `fallback`: the tests that open
    many copies of an index test what is in the files, not the disk (syncs cost nothing there)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield fallback
        return
    folder = Path(tempfile.mkdtemp(prefix="cliptool-test-", dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def strace_available() -> bool:
    return shutil.which("strace") is not None and subprocess.run(
        ["strace", "-qq", "-o", os.devnull, "true"], capture_output=True).returncode == 0


def traced(command: list[str], log: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `command` under strace (every thread and child; fd paths; full dumps of the data written)."""
    return subprocess.run(["strace", "-f", "-y", "-qq", "-s", "0", "-e", f"trace={SYSCALLS}", "-e", "write=all",
                           "-e", "signal=none", "-o", str(log), *command],
                          capture_output=True, text=True, env=env, timeout=timeout)


@dataclass
class Call:
    """One system call: its name, arguments as strace prints them, result, and the data written."""

    name: str
    args: list[str]
    result: int
    result_path: str | None
    data: bytes = b""


def _split(args: str) -> list[str]:
    out, depth, quote, angle, cur = [], 0, False, False, []
    i = 0
    while i < len(args):
        c = args[i]
        if quote:
            cur.append(c)
            if c == "\\":
                cur.append(args[i + 1])
                i += 1
            elif c == '"':
                quote = False
        elif angle:
            cur.append(c)
            angle = c != ">"
        elif c == '"':
            quote = True
            cur.append(c)
        elif c == "<" and cur and cur[-1].isdigit():
            angle = True
            cur.append(c)
        elif c in "([{":
            depth += 1
            cur.append(c)
        elif c in ")]}":
            depth -= 1
            cur.append(c)
        elif c == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur).strip())
    return out


def read_log(log: Path) -> list[Call]:
    """The calls of a strace log in the order they ended, unfinished and resumed halves joined."""
    calls: list[Call] = []
    pending: dict[str, str] = {}
    for raw in log.read_text(errors="replace").splitlines():
        if raw.startswith(" | ") and calls:
            hexpart = raw[3:].split("  ", 1)[1] if "  " in raw[3:] else ""
            calls[-1].data += bytes.fromhex(hexpart[:49].replace(" ", ""))
            continue
        if raw.startswith(" * "):
            continue
        pid, _, rest = raw.partition(" ")
        rest = rest.strip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^<\.\.\. (\w+) resumed>(.*)$", rest)
        if resumed:
            head = pending.pop(pid, f"{resumed.group(1)}(")
            rest = head + ("" if head.endswith("(") else ", ") + resumed.group(2).lstrip(", ")
        m = _LINE.match(f"{pid} {rest}")
        if not m:
            continue
        result_path = m.group(5)[1:-1] if m.group(5) else None
        calls.append(Call(m.group(2), _split(m.group(3)), int(m.group(4)), result_path))
    return calls


def strace_string(arg: str) -> str:
    """A path argument as strace quotes it, decoded."""
    return ast.literal_eval("b" + arg).decode("utf-8", "surrogateescape")


def fd_path(arg: str) -> str | None:
    """The path strace -y shows beside a file descriptor (`5</a/b>`), or None."""
    m = re.match(r"^-?\d+<(.*)>$", arg)
    return m.group(1) if m else None


@dataclass
class Node:
    """A file or folder: what a process sees, and what is durable."""

    is_dir: bool
    data: bytearray = field(default_factory=bytearray)
    synced: bytes | None = None  # a file's content as of its last sync (None: never)
    entries: dict[str, Node] = field(default_factory=dict)
    synced_entries: dict[str, Node] = field(default_factory=dict)

    def clean(self) -> bool:
        return bytes(self.data) == (self.synced or b"") if not self.is_dir else self.entries == self.synced_entries

    def entry_clean(self, name: str) -> bool:
        return self.synced_entries.get(name) is self.entries.get(name)


class Model:
    """The folder `root` as a process changes it, call by call (`apply`)."""

    def __init__(self, root: Path, load_from: Path | None = None) -> None:
        """`root` as it is now, or as `load_from` holds it (a copy of it from before the run)."""
        self.root = str(root)
        source = load_from or root
        self.top = self._load(source) if source.is_dir() else Node(True)
        self.pos: dict[int, int] = {}
        self.append: dict[int, bool] = {}
        self.blobs: Path | None = None  # where copies keep large files, linked (never written to)
        self._touched: list[str] = []

    def _load(self, path: Path) -> Node:
        if path.is_dir():
            node = Node(True)
            for child in sorted(path.iterdir()):
                node.entries[child.name] = self._load(child)
            node.synced_entries = dict(node.entries)
            return node
        data = path.read_bytes()
        return Node(False, bytearray(data), data)

    # -- paths -----------------------------------------------------------------------------
    def inside(self, path: str | None) -> bool:
        return path is not None and (path == self.root or path.startswith(self.root + "/"))

    def parts(self, path: str) -> list[str]:
        return [p for p in path[len(self.root):].split("/") if p]

    def node(self, path: str) -> Node | None:
        node: Node | None = self.top
        for part in self.parts(path):
            node = node.entries.get(part) if node is not None and node.is_dir else None
        return node

    def parent(self, path: str) -> tuple[Node | None, str]:
        head, _, name = path.rpartition("/")
        return (self.node(head) if self.inside(head) else None), name

    def chain(self, path: str) -> Iterator[tuple[Node, str]]:
        """(folder, name) of every step from the root down to `path`."""
        node = self.top
        for part in self.parts(path):
            yield node, part
            node = node.entries.get(part) or Node(True)

    def durable_path(self, path: str) -> bool:
        """Whether every name on the way to `path` is durable in its folder."""
        return all(folder.entry_clean(name) for folder, name in self.chain(path))

    def files_under(self, path: str) -> Iterator[tuple[str, Node]]:
        node = self.node(path)
        if node is None:
            return
        if not node.is_dir:
            yield path, node
            return
        for name, child in node.entries.items():
            yield from self.files_under(f"{path}/{name}")

    # -- replaying calls -------------------------------------------------------------------
    def resolve(self, dirfd: str, path: str) -> str:
        """An absolute path from a call's directory-fd and path arguments."""
        if path.startswith("/"):
            return os.path.normpath(path)
        base = fd_path(dirfd) or os.getcwd()
        return os.path.normpath(os.path.join(base, path))

    def _write(self, fd: int, node: Node, data: bytes, offset: int | None) -> None:
        at = offset if offset is not None else (len(node.data) if self.append.get(fd) else self.pos.get(fd, 0))
        if len(node.data) < at:
            node.data.extend(b"\0" * (at - len(node.data)))
        node.data[at : at + len(data)] = data
        if offset is None:
            self.pos[fd] = at + len(data)

    def apply(self, call: Call) -> None:
        self._apply(call)
        for path in self._touched:
            folder = self.node(path.rpartition("/")[0]) if self.inside(path.rpartition("/")[0]) else None
            if folder is not None and folder.is_dir and path.rpartition("/")[0].endswith(IMMEDIATE_NAMES):
                folder.synced_entries = dict(folder.entries)
        self._touched = []

    def _apply(self, call: Call) -> None:
        a, name = call.args, call.name
        if call.result < 0:
            return
        if name in ("openat", "open", "creat"):
            path = call.result_path
            if not self.inside(path):
                return
            flags = a[2] if name == "openat" else (a[1] if name == "open" else "O_CREAT|O_TRUNC")
            node = self.node(path)
            if node is None:
                folder, base = self.parent(path)
                if folder is None:
                    return
                node = folder.entries[base] = Node(False)
                self._touched.append(path)
            if "O_TRUNC" in flags and not node.is_dir:
                node.data = bytearray()
            self.pos[call.result] = 0
            self.append[call.result] = "O_APPEND" in flags
        elif name in ("write", "pwrite64", "writev", "pwritev"):
            path = fd_path(a[0])
            node = self.node(path) if self.inside(path) else None
            if node is not None and not node.is_dir:
                offset = int(a[3]) if name in ("pwrite64", "pwritev") else None
                self._write(int(a[0].split("<")[0]), node, call.data[: call.result], offset)
        elif name == "lseek":
            self.pos[int(a[0].split("<")[0])] = call.result
        elif name == "ftruncate":
            node = self.node(fd_path(a[0]) or "") if self.inside(fd_path(a[0])) else None
            if node is not None:
                size = int(a[1])
                node.data = node.data[:size] + bytearray(max(0, size - len(node.data)))
        elif name in ("fsync", "fdatasync"):
            path = fd_path(a[0])
            node = self.node(path) if self.inside(path) else None
            if node is not None:
                if node.is_dir:
                    node.synced_entries = dict(node.entries)
                else:
                    node.synced = bytes(node.data)
        elif name in ("rename", "renameat", "renameat2"):
            src = self.resolve("", strace_string(a[0])) if name == "rename" else self.resolve(a[0], strace_string(a[1]))
            dst = self.resolve("", strace_string(a[1])) if name == "rename" else self.resolve(a[2], strace_string(a[3]))
            (sf, sn), (df, dn) = self.parent(src), self.parent(dst)
            moved = sf.entries.pop(sn, None) if sf is not None else None
            if df is not None and moved is not None:
                df.entries[dn] = moved
            self._touched += [src, dst]
        elif name in ("mkdir", "mkdirat"):
            path = self.resolve("", strace_string(a[0])) if name == "mkdir" else self.resolve(a[0], strace_string(a[1]))
            folder, base = self.parent(path)
            if folder is not None and base not in folder.entries:
                folder.entries[base] = Node(True)
                self._touched.append(path)
        elif name in ("unlink", "rmdir", "unlinkat"):
            path = self.resolve("", strace_string(a[0])) if name != "unlinkat" else self.resolve(a[0], strace_string(a[1]))
            folder, base = self.parent(path)
            if folder is not None:
                folder.entries.pop(base, None)
                self._touched.append(path)
        elif name in ("link", "linkat"):
            src = self.resolve("", strace_string(a[0])) if name == "link" else self.resolve(a[0], strace_string(a[1]))
            dst = self.resolve("", strace_string(a[1])) if name == "link" else self.resolve(a[2], strace_string(a[3]))
            folder, base = self.parent(dst)
            if folder is None:
                return
            node = self.node(src) if self.inside(src) else None
            if node is None:  # a file from outside (the user cache): its content as it is, never synced here
                node = Node(False, bytearray(Path(src).read_bytes()) if Path(src).is_file() else bytearray())
            folder.entries[base] = node
        elif name in ("sendfile", "copy_file_range"):
            path = fd_path(a[0]) if name == "sendfile" else fd_path(a[2])
            if self.inside(path):
                raise NotImplementedError(f"{name} into {path}: the model cannot see what it copied")

    def crash_copy(self, out: Path) -> None:
        """Writes what a crash now would leave: durable names, each file's synced content."""
        self._copy(self.top, out, durable=True)

    def current_copy(self, out: Path) -> None:
        """Writes what the process sees now (as if it ended here without a crash)."""
        self._copy(self.top, out, durable=False)

    def _copy(self, node: Node, path: Path, durable: bool) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for name, child in (node.synced_entries if durable else node.entries).items():
            if child.is_dir:
                self._copy(child, path / name, durable)
                continue
            data = (child.synced or b"") if durable else bytes(child.data)
            if len(data) < BLOB_BYTES or self.blobs is None:
                (path / name).write_bytes(data)
                continue
            import hashlib

            blob = self.blobs / hashlib.blake2b(data, digest_size=16).hexdigest()
            if not blob.exists():
                self.blobs.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(data)
            os.link(blob, path / name)  # large files (the text tower) once, linked into every copy


def replay(root: Path, calls: list[Call], before: Callable[[Model, Call], None] | None = None,
           after: Callable[[Model, Call], None] | None = None, start: Model | None = None) -> Model:
    """Applies `calls` to a model of `root` as it is now (or `start`), calling `before` and
    `after` around each."""
    model = start or Model(root)
    for call in calls:
        if before is not None:
            before(model, call)
        model.apply(call)
        if after is not None:
            after(model, call)
    return model
