"""Every command line the docs show, run for real.

The fenced blocks of README.md and docs/*.md are read; each line that is a cliptool command (it
starts with `cliptool `, after an optional `$ ` and `NAME=value` settings; `| jq ...` and
`| xargs cliptool ...` stages are run too) is run against an index of the sample clips made with
the toy CLIP, block by block: each block starts from its own copy of that index, and its
commands run in order, so an `index` line changes what the next line of the block sees.

What a line may do:
- exit 0; or
- exit as a trailing comment in the docs says: `# exit N: "words"` is exit code N with one line
  on stderr, `cliptool: error: ...`, containing those words; or
- what MACHINE below says, for what belongs to this machine rather than to the command: a model
  that needs a download (no network here), a weights file it cannot have, and a Ray cluster or
  a Milvus server, whose lines are only parsed (click's parser, through cliptool.cli.app).
A failing line in neither place fails the test, and so does a MACHINE entry no page uses.

The example names stand for the fixture's things by SUBSTITUTIONS; outputs go to a fresh folder
per command; `--index-dir` names the block's index; an `index` line that names a model
(`--model`, `--pretrained`) starts a new index, which the block keeps when the line succeeds;
`serve` and `watch` start in a new process (`serve` on a free port) and are stopped with Ctrl-C
once they are in place (see start_and_stop). `--play` finds a stand-in `mpv` on PATH that only
records its arguments.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, make_samples, run_here

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = ("", "sh", "bash", "shell", "console")
TOY = REPO / "data" / "toy-clip"
EXAMPLE_SCENE_ID = "3f2a9c0d1e2b4a5c/9b1e07aa/00012"
LONG_RUNNING = ("serve", "watch")

# Outcomes that belong to this machine, not to the command: the command's text as the docs
# write it (comment left out) -> what it does here.
OFFLINE = "HF_HUB_OFFLINE is set"  # the start of every "cannot download it here" error


@dataclass(frozen=True)
class Outcome:
    code: int = 0
    words: str = ""
    parse_only: str = ""  # why it can only be parsed here (what the machine lacks)


MACHINE: dict[str, Outcome] = {
    # models whose weights need a download: no network here
    "cliptool index ~/Videos --model ViT-B-32 --pretrained laion2b_s34b_b79k": Outcome(6, OFFLINE),
    "cliptool index ~/Videos --model multilingual": Outcome(6, OFFLINE),
    "cliptool index ~/Videos --model hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K": Outcome(6, OFFLINE),
    "cliptool index ~/Videos --model ViT-B-32 --pretrained hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K":
        Outcome(6, OFFLINE),
    # the default model's weights file, which cannot be had here
    "cliptool index ~/Videos --model ViT-B-32 --pretrained /path/to/open_clip_pytorch_model.bin":
        Outcome(6, "--pretrained: no such file"),
    # resources this machine cannot have: their options are parsed, nothing runs
    "cliptool index /mnt/archive --ray auto": Outcome(parse_only="a Ray cluster"),
    "cliptool index /mnt/archive --ray ray://head:10001": Outcome(parse_only="a Ray cluster"),
    "cliptool index /mnt/archive --ray 10.0.0.5:6379": Outcome(parse_only="a Ray cluster"),
    "cliptool index /mnt/archive --vector-store milvus://milvus-host:19530": Outcome(parse_only="a Milvus server"),
    "cliptool serve --host 0.0.0.0 --vector-store milvus+https://milvus.example.org":
        Outcome(parse_only="a Milvus server"),
}

ANNOTATION = re.compile(r'\bexit (\d+): "([^"]+)"')
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# -- reading the docs ---------------------------------------------------------------------------

@dataclass
class Command:
    where: str  # file:line
    text: str  # the command as the docs write it, without its comment
    comment: str

    def expected(self) -> Outcome:
        if self.text in MACHINE:
            return MACHINE[self.text]
        m = ANNOTATION.search(self.comment)
        return Outcome(int(m.group(1)), m.group(2)) if m else Outcome()


@dataclass
class Block:
    where: str
    commands: list[Command] = field(default_factory=list)


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment): the comment starts at the first `#` outside quotes after a blank."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def is_command(text: str) -> bool:
    words = text.split()
    while words and ASSIGNMENT.match(words[0]):
        words.pop(0)
    return bool(words) and words[0] == "cliptool" and len(words) > 1


def doc_blocks() -> list[Block]:
    blocks: list[Block] = []
    for path in DOC_FILES:
        name = path.relative_to(REPO).as_posix()
        lines = path.read_text(encoding="utf-8").splitlines()
        block: Block | None = None
        for number, line in enumerate(lines, 1):
            fence = line.strip()
            if fence.startswith("```"):
                if block is None:
                    block = Block(f"{name}:{number}") if fence[3:].strip() in SHELL_BLOCKS else Block("")
                else:
                    if block.where and block.commands:
                        blocks.append(block)
                    block = None
                continue
            if block is None or not block.where:
                continue
            text, comment = split_comment(line.strip().removeprefix("$ "))
            if is_command(text):
                block.commands.append(Command(f"{name}:{number}", text, comment))
    return blocks


BLOCKS = doc_blocks()


# -- the fixture: sample clips, the toy CLIP's index of them, frames, model folders ------------

@dataclass
class Fixture:
    root: Path
    videos: Path
    index: Path
    subs: dict[str, str]


def run_cli(index_dir: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """`cliptool --index-dir INDEX ARGV` through the CLI app in this process (conftest.run_here)."""
    return run_here(index_dir, *argv)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{shlex.join(proc.args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def _model_folders(root: Path) -> dict[str, str]:
    """Tiny random-weight transformers folders for the model-folder examples (as test_hf_models
    makes them), made only when the docs use them."""
    text = "\n".join(c.text for b in BLOCKS for c in b.commands)
    folders = {}
    if "~/models/clip-vit-base-patch32" in text:
        from test_hf_models import _write_clip_folder

        folders["~/models/clip-vit-base-patch32"] = str(_write_clip_folder(root / "clip-vit-tiny", "quick_gelu", 0))
    if "~/models/chinese-clip-vit-base-patch16" in text:
        import torch
        from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel

        from test_hf_models import CHINESE_VOCAB, _tiny_tower

        out = root / "chinese-clip-tiny"
        torch.manual_seed(1)
        config = ChineseCLIPConfig(text_config=_tiny_tower(vocab_size=len(CHINESE_VOCAB), max_position_embeddings=64),
                                   vision_config=_tiny_tower(image_size=32, patch_size=8), projection_dim=16)
        ChineseCLIPModel(config).save_pretrained(str(out))
        (out / "vocab.txt").write_text("\n".join(CHINESE_VOCAB) + "\n", encoding="utf-8")
        BertTokenizer(str(out / "vocab.txt")).save_pretrained(str(out))
        folders["~/models/chinese-clip-vit-base-patch16"] = str(out)
    return folders


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    if not (TOY / "weights.safetensors").is_file():
        pytest.skip("the toy CLIP is not in data/toy-clip")
    root = tmp_path_factory.mktemp("docs")
    videos = root / "Videos"
    (videos / "2019").mkdir(parents=True)
    for name, segments in {**make_samples.SAMPLES, **make_samples.SHAPE_SAMPLES}.items():
        make_samples.write_clip(videos / ("2019" if name == "parade.mp4" else "") / name, segments)
    index = root / "index"
    ok(run_cli(index, ["index", str(videos), "--model", str(TOY / "config.json"),
                       "--pretrained", str(TOY / "weights.safetensors")]))
    frames = root / "frames"
    frames.mkdir()
    for name, video, at in (("still.jpg", videos / "garden-shapes.mp4", 10), ("beach.jpg", videos / "2019" /
                            "parade.mp4", 3.5), ("blurry.jpg", videos / "outdoors.mp4", 1)):
        ok(run_cli(index, ["export-frame", "--video", str(video), "--at", str(at), "-o", str(frames / name)]))
    hits = json.loads(ok(run_cli(index, ["search", "a yellow star", "--json"])).stdout)["results"]
    # The example names, and what they stand for here. Folders (and files under them) by prefix.
    subs = {
        "~/Videos": str(videos), "/media/archive": str(videos), "/mnt/archive": str(videos),
        "data/samples": str(videos),
        "clip.mp4": str(videos / "garden-shapes.mp4"), "film.mp4": str(videos / "shapes.mp4"),
        "still.jpg": str(frames / "still.jpg"), "beach.jpg": str(frames / "beach.jpg"),
        "blurry.jpg": str(frames / "blurry.jpg"),
        "data/toy-clip": str(TOY),
        EXAMPLE_SCENE_ID: hits[0]["scene_id"],
        **_model_folders(root / "models"),
    }
    return Fixture(root, videos, index, subs)


# -- running a line -----------------------------------------------------------------------------

def substitute(word: str, subs: dict[str, str]) -> str:
    weight = re.match(r"^(\d+(?:\.\d+)?:)(.+)$", word)  # an image term's weight: 0.5:blurry.jpg
    if weight and weight.group(2) in subs:
        return weight.group(1) + subs[weight.group(2)]
    for key in sorted(subs, key=len, reverse=True):
        if word == key or word.startswith(key.rstrip("/") + "/"):
            return subs[key] + word[len(key):]
    return word


def argv_of(words: list[str], subs: dict[str, str], index: Path) -> list[str]:
    out: list[str] = []
    it = iter(words)
    for word in it:
        if word == "--index-dir":
            next(it, None)
            out += [word, str(index)]
        elif word.startswith("--index-dir="):
            out.append(f"--index-dir={index}")
        else:
            out.append(substitute(word, subs))
    return out


def stages(text: str) -> list[list[str]]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token == "|":
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def subcommand(argv: list[str]) -> str | None:
    from cliptool.cli import GLOBAL_OPTIONS

    words = iter(argv)
    for word in words:
        if word in GLOBAL_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def names_a_model(argv: list[str]) -> bool:
    return subcommand(argv) == "index" and any(w.split("=")[0] in ("--model", "--pretrained") for w in argv)


def parse_only(argv: list[str], index: Path) -> None:
    """The line through click's parser (cliptool.cli.app's group, global options hoisted, then
    the subcommand's options), nothing run; a --vector-store value through cliptool's own check."""
    import typer

    from cliptool.cli import app

    group = typer.main.get_command(app)
    with group.make_context("cliptool", ["--index-dir", str(index), *argv]) as ctx:
        protected = getattr(ctx, "_protected_args", None)
        rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
        name, command, rest = group.resolve_command(ctx, rest)
        sub = command.make_context(name, rest, parent=ctx)
    store = sub.params.get("vector_store")
    if store:
        from cliptool.vectors.milvus import parse_vector_store

        parse_vector_store(store, index)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        time.sleep(0.1)
    return False


def start_and_stop(argv: list[str], index: Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A long-running command in a new process until it is in place: for `serve`, on a free port,
    its first line of output (its address), and then the port answers; for `watch`, its line
    "watching ..." (said after its catch-up run; lines before it are the run's). Then Ctrl-C,
    after which it must end well: `serve` with exit 0, `watch` with 130 and its "interrupted"
    line, as Ctrl-C makes it. Exit 0 when all that happened, else its own exit status (1 if
    none) and its output."""
    port = None
    command = subcommand(argv)
    if command == "serve":
        port = free_port()
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(port)
        else:
            argv = [*argv, "--port", str(port)]
    proc = subprocess.Popen([sys.executable, "-m", "cliptool", "--index-dir", str(index), *argv], cwd=cwd,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first: list[str] = []

    def read() -> None:  # up to the line that says it is in place (or the end of its output)
        for line in proc.stdout:  # type: ignore[union-attr]
            first.append(line)
            if command != "watch" or line.startswith("watching "):
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)
    last = first[-1] if first else ""
    started = bool(last.strip()) and proc.poll() is None
    if started and port is not None:
        started = "http://" in last and _listening(port, 30)
    if started and command == "watch":
        started = last.startswith("watching ")
    interrupted = proc.poll() is None
    if interrupted:
        proc.send_signal(signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, _ = proc.communicate()
    said = "".join(first) + (rest or "")
    ended_well = proc.returncode == 0 or (
        command == "watch" and interrupted and proc.returncode == 130 and "cliptool: interrupted" in (rest or ""))
    code = (0 if started else 1) if ended_well else proc.returncode
    return subprocess.CompletedProcess(argv, code, said if code == 0 else "", said)


def run_line(command: Command, fx: Fixture, index: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs one docs line; returns its result and the index the block goes on with."""
    parts = stages(command.text)
    env = {}
    while parts[0] and ASSIGNMENT.match(parts[0][0]):
        name, _, value = parts[0].pop(0).partition("=")
        env[name] = value
    argv = argv_of(parts[0][1:], fx.subs, index)
    expected = command.expected()
    if expected.parse_only:
        try:
            parse_only(argv, index)
        except Exception as exc:  # noqa: BLE001 - the parser's own words are the report
            return subprocess.CompletedProcess(argv, 2, "", f"not parsed: {exc}"), index
        return subprocess.CompletedProcess(argv, 0, "", ""), index
    target = index
    if names_a_model(argv):  # a new index for the model it names
        target = cwd / "new-index"
        argv = argv_of(argv, {}, target)
    if subcommand(argv) in LONG_RUNNING:
        return start_and_stop(argv, target, cwd, env), index
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with _environment(env):
            result = run_cli(target, argv)
            for stage in parts[1:]:
                if result.returncode != 0:
                    break
                result = _next_stage(stage, result, fx, target)
    finally:
        os.chdir(here)
    return result, (target if result.returncode == 0 else index)


def _next_stage(stage: list[str], previous: subprocess.CompletedProcess, fx: Fixture,
                index: Path) -> subprocess.CompletedProcess:
    if stage[:2] == ["xargs", "cliptool"]:
        return run_cli(index, [*argv_of(stage[2:], fx.subs, index), *previous.stdout.split()])
    if stage[:1] == ["jq"]:
        if shutil.which("jq") is None:
            pytest.skip("jq is not installed")
        return subprocess.run(stage, check=False, input=previous.stdout, capture_output=True, text=True, timeout=60)
    return subprocess.CompletedProcess(stage, 2, "", f"the docs test cannot run a `{stage[0]}` stage")


@contextlib.contextmanager
def _environment(env: dict[str, str]):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def judge(command: Command, result: subprocess.CompletedProcess) -> str | None:
    """What is wrong with a line's result, or None."""
    expected = command.expected()
    head = f"{command.where}: {command.text}\n  ran: {shlex.join(map(str, result.args))}\n  "
    if expected.code == 0:
        if result.returncode != 0:
            return head + f"exited {result.returncode} (not annotated `# exit N: \"...\"`):\n{result.stderr}"
        return None
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if (result.returncode != expected.code or len(lines) != 1 or not lines[0].startswith("cliptool: error: ")
            or expected.words not in lines[0]):
        return head + f"expected exit {expected.code} and one error line with {expected.words!r}; got exit " \
                      f"{result.returncode}:\n{result.stderr}"
    return None


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory):
    """No network (named weights are not downloaded: HF_HUB_OFFLINE, an empty Hugging Face
    cache) and a stand-in mpv on PATH that records what it was asked to play."""
    bin_dir = tmp_path_factory.mktemp("bin")
    played = bin_dir / "played.txt"
    mpv = bin_dir / "mpv"
    mpv.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(played))}\n')
    mpv.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        mp.delenv("CLIPTOOL_PLAYER", raising=False)
        mp.delenv("CLIPTOOL_TEXT_PRECISION", raising=False)
        mp.delenv("CLIPTOOL_VECTOR_STORE", raising=False)
        yield played


def _copy_index(src: Path, dst: Path) -> Path:
    """A copy of an index; the (large, never rewritten) text tower exports hard-linked."""
    def copy(a: str, b: str) -> None:
        if "textenc-onnx" in Path(a).relative_to(src).parts:
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=copy)
    return dst


# -- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_every_command_line_of_the_docs_runs(block: Block, fixture: Fixture, environment: Path,
                                             tmp_path: Path) -> None:
    index = _copy_index(fixture.index, tmp_path / "index")
    problems = []
    for n, command in enumerate(block.commands):
        cwd = tmp_path / f"run{n}"
        cwd.mkdir()
        result, index = run_line(command, fixture, index, cwd)
        print(f"{command.where}: exit {result.returncode}: {command.text}")  # shown with -s, or on a failure
        problem = judge(command, result)
        if problem:
            problems.append(problem)
    assert not problems, "\n\n".join(problems)


def test_the_docs_show_commands_and_every_machine_outcome_is_used() -> None:
    texts = {c.text for b in BLOCKS for c in b.commands}
    assert len(texts) > 50, "the docs' command lines were not found"
    assert not set(MACHINE) - texts, f"MACHINE entries no page shows any more: {sorted(set(MACHINE) - texts)}"
    annotated = [c for b in BLOCKS for c in b.commands if "exit " in c.comment]
    assert annotated and all(ANNOTATION.search(c.comment) for c in annotated), \
        [c.where for c in annotated if not ANNOTATION.search(c.comment)]


def test_the_toy_clip_example_finds_the_star(fixture: Fixture, environment: Path, tmp_path: Path) -> None:
    """models.md's toy CLIP block, as the docs promise it: its search's first hit is the clip
    that shows a yellow star."""
    block = next(b for b in BLOCKS if any("data/toy-clip" in c.text for c in b.commands))
    index = tmp_path / "index"
    for n, command in enumerate(block.commands):
        (tmp_path / f"run{n}").mkdir()
        result, index = run_line(command, fixture, index, tmp_path / f"run{n}")
        assert result.returncode == 0, result.stderr
    assert "garden-shapes.mp4" in result.stdout.splitlines()[1], result.stdout


def test_play_starts_the_player_at_the_hit(fixture: Fixture, environment: Path, tmp_path: Path) -> None:
    """The `--play` lines reach the player with a start time (the stand-in mpv records it)."""
    environment.unlink(missing_ok=True)
    plays = [c for b in BLOCKS for c in b.commands if " --play " in c.text]
    assert plays
    index = _copy_index(fixture.index, tmp_path / "index")
    for command in plays:
        result, _ = run_line(command, fixture, index, tmp_path)
        assert result.returncode == 0, result.stderr
    lines = environment.read_text().splitlines()
    assert len(lines) == len(plays) and all("--start=" in line for line in lines), lines


def _commands() -> list[str]:
    import typer

    from cliptool.cli import app

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("name", ["", *_commands()])
def test_help_of_every_command(name: str, tmp_path: Path) -> None:
    result = run_cli(tmp_path / "index", [name, "--help"] if name else ["--help"])
    assert result.returncode == 0 and "Usage:" in result.stdout, result.stdout + result.stderr


# -- links --------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen, fenced = set(), {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_every_link_of_the_docs_leads_somewhere() -> None:
    broken = []
    for path in DOC_FILES:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.name}: {target}: no such heading")
    assert not broken, "\n".join(broken)


def test_every_page_is_linked_from_the_readme_and_the_docs_index() -> None:
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"README.md"}
    for index in (REPO / "README.md", REPO / "docs" / "README.md"):
        linked = {Path(t.partition("#")[0]).name for t in LINK.findall(index.read_text(encoding="utf-8"))}
        assert pages <= linked, (index, sorted(pages - linked))
