"""The text path: cold and warm search for a CLIP and a Hugging Face text tower, with this
cliptool and with an earlier commit's (the numpy encoder), alternately in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cliptool.bench.corpus import REPO
from cliptool.bench.measure import LAST_CPU, baseline_code, median, run_child
from cliptool.bench.search import build_search_index, export_text
from cliptool.bench.tables import cell, print_aligned

TEXT_BASELINE_COMMIT = "ee9ec7e"  # the last commit whose text path is the numpy encoder (textenc before ONNX)
_CLI = "import sys; sys.path.insert(0, sys.argv[1]); sys.argv = ['cliptool', *sys.argv[2:]]; from cliptool.cli import run; run()"


# Warm queries with the cliptool in argv[1] (this one or an older one: only the Searcher API both
# have), wall and CPU per query: CPU time is what the shared machine's load disturbs least.
_WARM = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
try:  # the layered package; an older cliptool had one search module
    from cliptool.search.searcher import Searcher
except ImportError:
    from cliptool.search import Searcher
searcher = Searcher(sys.argv[2], text_runtime="onnxruntime")
queries = ["a dog running on a beach", "a red car at night", "two people talking in a kitchen",
           "snow on mountains", "a cat", "fireworks over a city skyline"]
searcher.search(searcher.text_vector("warm up"), top=10)
wall, cpu, total = [], [], []
for _ in range(int(sys.argv[3])):
    for q in queries:
        w0, c0 = time.perf_counter(), time.process_time()
        v = searcher.text_vector(q)
        w1, c1 = time.perf_counter(), time.process_time()
        searcher.search(v, top=10)
        wall.append((w1 - w0) * 1e3); cpu.append((c1 - c0) * 1e3); total.append((time.perf_counter() - w0) * 1e3)
encoder = searcher.exported_text_encoder()
path = "open_clip (torch)" if encoder is None else type(encoder).__name__
if encoder is not None and hasattr(encoder, "runtime"):
    path += f" ({encoder.runtime}{', ' + encoder.precision if hasattr(encoder, 'precision') else ''})"
print(json.dumps({"text_ms": statistics.median(wall), "text_cpu_ms": statistics.median(cpu),
                  "query_ms": statistics.median(total), "text_path": path}))
"""


def build_multilingual_checkpoint(out: Path) -> tuple[Path, Path]:
    """xlm-roberta-base-ViT-B-32's architecture with seeded random weights (config JSON whose
    text tower is a local Hugging Face folder, checkpoint): real size, real speed."""
    folder = out / "xlmr-base-random"
    code = ("import sys, importlib.util as u; s = u.spec_from_file_location('m', sys.argv[1]); m = u.module_from_spec(s); "
            "s.loader.exec_module(m); print(*m.write_tiny_multilingual_model(sys.argv[2], size='base'))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "data" / "tiny_multilingual.py"), str(folder)],
                          check=True, capture_output=True, text=True).stdout.split()
    return Path(done[0]), Path(done[1])


def bench_text(out: Path, ckpt: Path, work: Path, n_scenes: int, repeat: int,
               baseline_commit: str | None = TEXT_BASELINE_COMMIT) -> list[dict[str, Any]]:
    """Cold `cliptool search` (a new process) and warm queries on a synthetic index, for a CLIP
    text tower (ViT-B-32) and a Hugging Face one (XLM-RoBERTa base), with this cliptool's ONNX
    text path (its exact tower, and its int8 one: `--text-precision int8`) and with the cliptool
    of `baseline_commit` (its numpy encoder; open_clip for towers that encoder could not run),
    in this one run."""
    old = baseline_code(out, baseline_commit) if baseline_commit else None
    hf_config, hf_ckpt = build_multilingual_checkpoint(out)
    rows: list[dict[str, Any]] = []
    towers = {"CLIP ViT-B-32": ("ViT-B-32", ckpt, ""), "HF XLM-R base": (str(hf_config), hf_ckpt, "xlmr")}
    for tower, (model, weights, label) in towers.items():
        print(f"bench: text path, {tower}, {n_scenes} scenes", file=sys.stderr)
        sdir = build_search_index(out, weights, n_scenes, model, label)
        codes = {"now": REPO, "now, int8 text": REPO}
        envs = {"now": {"CLIPTOOL_TEXT_PRECISION": "fp32"}, "now, int8 text": {"CLIPTOOL_TEXT_PRECISION": "int8"}}
        if old is not None:
            export_text(old, model, weights, sdir)  # the old export lives beside the new one
            codes[f"before ({baseline_commit})"] = old
        # Each measurement alternates between the versions, so that both see the same load.
        cold: dict[str, list[tuple[float, float, int]]] = {v: [] for v in codes}
        warm: dict[str, list[dict[str, Any]]] = {v: [] for v in codes}
        for _ in range(max(3, repeat + 2)):
            for version, code in codes.items():
                wall, rss, _ = run_child([sys.executable, "-c", _CLI, str(code), "--index-dir", str(sdir), "search",
                                          "a dog running on a beach", "--top", "10"], env=envs.get(version))
                cold[version].append((wall, LAST_CPU[0], rss))
        for _ in range(2):
            for version, code in codes.items():
                warm_out = work / "warm-text.json"
                run_child([sys.executable, "-c", _WARM, str(code), str(sdir), str(repeat)], capture=warm_out,
                          env=envs.get(version))
                try:
                    warm[version].append(json.loads(warm_out.read_text()))
                except (OSError, ValueError):
                    pass
        for version in codes:
            runs, w = cold[version], warm[version]
            rows.append({"tower": tower, "code": version, "scenes": n_scenes,
                         "text_path": w[0]["text_path"] if w else "-",
                         "cold_s": median([r[0] for r in runs]), "cold_runs_s": [r[0] for r in runs],
                         "cold_cpu_s": median([r[1] for r in runs]), "cold_peak_rss_mb": max(r[2] for r in runs),
                         "warm_text_ms": median([x["text_ms"] for x in w]),
                         "warm_text_cpu_ms": median([x["text_cpu_ms"] for x in w]),
                         "warm_query_ms": median([x["query_ms"] for x in w])})
    return rows


def print_text(rows: list[dict[str, Any]]) -> None:
    print(f"\ntext search path, {rows[0]['scenes'] if rows else '-'} scenes (cold: `cliptool search` in a new process; "
          "warm: one searcher, medians)")
    table = [("tower", "cliptool", "text path", "cold s", "cold CPU s", "cold RSS MB", "warm text ms",
              "warm text CPU ms", "warm query ms")]
    table += [(r["tower"], r["code"], r["text_path"], cell(r["cold_s"], "{:.2f}"), cell(r.get("cold_cpu_s"), "{:.2f}"),
               cell(r.get("cold_peak_rss_mb"), "{:.0f}"), cell(r["warm_text_ms"], "{:.1f}"),
               cell(r.get("warm_text_cpu_ms"), "{:.1f}"), cell(r["warm_query_ms"], "{:.1f}")) for r in rows]
    print_aligned(table, left=True)
