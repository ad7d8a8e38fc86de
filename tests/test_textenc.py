"""Tests for cliptool.textenc: the torch-free CLIP text encoder.

Small open_clip models with seeded random weights are exported and compared with open_clip
itself (token ids exactly, embeddings by cosine). open_clip/torch are only imported here, in
the test process; a subprocess checks that loading and encoding never imports torch.

Run this file directly for the real-size ViT-B-32 measurements (export sizes, fp32/fp16
accuracy, cold-process timings):  python tests/test_textenc.py [--runs 9] [--out DIR]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cliptool import textenc  # noqa: E402
from cliptool.textenc import (  # noqa: E402
    ClipBpeTokenizer,
    NumpyTextEncoder,
    export_text_encoder,
    is_text_encoder_dir,
)

TEXTS = [
    "",
    "a dog in a park",
    "A Photo Of A CAT on the SOFA",
    "Hello, World!!! ... ?!?  (really) [x] {y} #hashtag @user $5.99 100% 3.14159",
    "don't you'll we've I'M they'd it's she'll 'quoted'",
    "fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &amp;amp;lt; &quot;q&quot; &#39;s &nbsp;x &copy;",
    "café naïve résumé Straße façade Ångström",
    "日本語のテキスト 中文文本 한국어 텍스트",
    "emoji 😀🐶🎉 and flags 🇫🇷 👍🏽",
    "mojibake: cafÃ© â€œquotesâ€\x9d",
    "  lots   of\twhite\nspace\r\n and  tabs\t\t ",
    "control\x00chars\x1b[31m red\x7f",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ ﬁligature ＂",
    "<start_of_text> special <END_OF_TEXT> tokens <start_of_text>",
    "numbers 1234567890 ١٢٣ ⅷ ½",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "a very long caption " + "with many repeated words and more words " * 12,
    "x" * 400,
    "Ελληνικά Кириллица עברית العربية हिन्दी",
    "mixed-CASE_snake_case camelCaseWord URL https://example.com/a?b=c&d=e",
]


def _tiny_cfg(**text_extra):
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    text.update(text_extra)
    return {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 32},
        "text_cfg": text,
    }


# name -> model config. Together they cover GELU / QuickGELU / tanh-GELU, argmax / eos /
# last pooling, causal and bidirectional attention, layer scale, a projection with bias,
# and both CLIP and CustomTextCLIP model classes.
CONFIGS = {
    "cliptool-tiny-gelu": _tiny_cfg(),
    "cliptool-tiny-quick": {**_tiny_cfg(heads=4, ls_init_value=0.5, proj_bias=True), "quick_gelu": True},
    "cliptool-tiny-custom": {
        **_tiny_cfg(pool_type="eos", eos_id=49407, act_kwargs={"approximate": "tanh"}),
        "custom_text": True,
    },
    "cliptool-tiny-bidir": _tiny_cfg(no_causal_mask=True, pool_type="last", layers=1),
}
UNSUPPORTED = {
    "cliptool-tiny-qknorm": _tiny_cfg(qk_norm=True),  # custom attention blocks
    "cliptool-tiny-coca": {**_tiny_cfg(embed_cls=True), "custom_text": True},  # appended CLS
}


@pytest.fixture(scope="module")
def oc(tmp_path_factory):
    """open_clip with the test configs registered."""
    open_clip = pytest.importorskip("open_clip")
    cfg_dir = tmp_path_factory.mktemp("configs")
    for name, cfg in {**CONFIGS, **UNSUPPORTED}.items():
        (cfg_dir / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_dir)
    return open_clip


def _make_model(oc, name):
    import torch

    torch.manual_seed(0)
    model = oc.create_model(name, pretrained=None).eval()
    # Perturb every parameter so layer norms, biases and layer scales are not at their
    # trivial initial values, and scale up the embeddings so attention is not uniform.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.startswith("visual."):
                continue
            p.add_(torch.randn(p.shape, generator=gen) * (0.1 if p.ndim == 1 else 0.02))
        emb = model.text.token_embedding if hasattr(model, "text") else model.token_embedding
        emb.weight.mul_(20.0)
    return model


def _reference(model, tokenizer, texts):
    import torch

    ids = tokenizer(texts)
    with torch.no_grad():
        feats = model.encode_text(ids, normalize=True)
    return ids.numpy(), feats.numpy()


@pytest.fixture(scope="module")
def exported(oc, tmp_path_factory):
    """name -> (model, open_clip tokenizer, export dir) for every supported config."""
    out = {}
    root = tmp_path_factory.mktemp("exports")
    tok = oc.get_tokenizer("cliptool-tiny-gelu")  # all configs use the default CLIP tokenizer
    for name in CONFIGS:
        model = _make_model(oc, name)
        d = root / name
        # the first export looks its tokenizer up by name, the others reuse it (faster)
        export_text_encoder(model, name, d, tokenizer=None if not out else tok)
        out[name] = (model, tok, d)
    return out


# ------------------------------------------------------------------------------------------
# tokenizer
# ------------------------------------------------------------------------------------------


def test_token_ids_match_open_clip(exported):
    _, tok, d = exported["cliptool-tiny-gelu"]
    enc = NumpyTextEncoder.load(d)
    ref = tok(TEXTS).numpy()
    mine = enc.tokenize(TEXTS)
    assert mine.dtype == np.int64 and mine.shape == ref.shape == (len(TEXTS), 77)
    for text, r, m in zip(TEXTS, ref, mine):
        assert r.tolist() == m.tolist(), f"token ids differ for {text!r}"
    # and the unpadded ids / truncation keeps EOT
    ntok = enc.tokenizer.tokenize("x" * 400)
    assert len(ntok) == 77 and ntok[0] == 49406 and ntok[-1] == 49407


def test_token_ids_match_open_clip_random_text(oc, exported):
    _, tok, d = exported["cliptool-tiny-gelu"]
    enc = NumpyTextEncoder.load(d)
    rng = np.random.default_rng(0)
    pool = list("abcdefghijklmnopqrstuvwxyz ABCXYZ0123456789 .,;:!?'\"-_&#()<>/\\\t\n")
    pool += list("éèüßøñçÅ日本語中文한국😀🐶—–“”‘’…€£½ﬁ\u0301\u200b\xa0")
    texts = ["".join(rng.choice(pool, size=rng.integers(0, 60))) for _ in range(200)]
    texts += ["&amp;" * 3, "&#x41;&#66;", "a&b", "&", "&&;", "'S 'LL 'Re"]
    np.testing.assert_array_equal(enc.tokenize(texts), tok(texts).numpy())


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_clean_variants_match_open_clip(oc, clean):
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    ref = SimpleTokenizer(clean=clean)
    mine = ClipBpeTokenizer(default_bpe(), 77, clean=clean)
    for text in TEXTS:
        assert mine.encode(text) == ref.encode(text), text
    np.testing.assert_array_equal(mine(TEXTS), ref(TEXTS).numpy())
    np.testing.assert_array_equal(mine(TEXTS, context_length=16), ref(TEXTS, context_length=16).numpy())


def test_vocabulary_matches_open_clip(oc):
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    mine = ClipBpeTokenizer(default_bpe())
    assert mine.encoder == SimpleTokenizer().encoder
    assert (mine.sot_token_id, mine.eot_token_id, mine.vocab_size) == (49406, 49407, 49408)


def test_plain_ascii_fast_path_is_exact():
    """Skipping ftfy for printable ASCII without '&' must change nothing."""
    import ftfy

    rng = np.random.default_rng(1)
    alphabet = [chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"] + ["\t", "\n"]
    for _ in range(3000):
        s = "".join(rng.choice(alphabet, size=rng.integers(0, 30)))
        assert textenc._is_plain_ascii(s)
        assert ftfy.fix_text(s) == s, repr(s)
    for s in ["&amp;", "a\rb", "a\x00b", "\x1b[1m", "\x7f", "café", "\u00a0"]:
        assert not textenc._is_plain_ascii(s)


# ------------------------------------------------------------------------------------------
# encoder
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_embeddings_match_open_clip(exported, name):
    model, tok, d = exported[name]
    enc = NumpyTextEncoder.load(d)
    ids, ref = _reference(model, tok, TEXTS)
    got = enc.encode_batch(TEXTS)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = np.sum(got * ref, axis=1)
    worst = int(np.argmin(cos))
    print(f"{name}: worst cosine {cos[worst]:.8f} for {TEXTS[worst][:30]!r}")
    assert cos.min() > 0.9999, f"{name}: cosine {cos[worst]} for {TEXTS[worst]!r}"
    # one text at a time gives the same vectors as the batch
    single = np.stack([enc.encode(t) for t in TEXTS[:6]])
    np.testing.assert_allclose(single, got[:6], atol=2e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_onnx_runtime_layers_match_numpy(exported, name):
    """The layers rebuilt as an ONNX Runtime graph give the numpy encoder's vectors."""
    pytest.importorskip("onnxruntime")
    model, tok, d = exported[name]
    plain = NumpyTextEncoder.load(d)
    fast = NumpyTextEncoder.load(d, runtime="onnxruntime")
    assert (plain.runtime, fast.runtime) == ("numpy", "onnxruntime")
    got, want = fast.encode_batch(TEXTS), plain.encode_batch(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-5)
    _, ref = _reference(model, tok, TEXTS)
    assert np.sum(got * ref, axis=1).min() > 0.9999
    np.testing.assert_allclose(np.stack([fast.encode(t) for t in TEXTS[:4]]), want[:4], atol=1e-5)


@pytest.mark.parametrize("name", ["cliptool-tiny-gelu", "cliptool-tiny-custom"])
def test_truncation_at_pool_position_is_exact(exported, name):
    """Causal mask: running only the prefix up to the pooled token changes nothing."""
    _, tok, d = exported[name]
    enc = NumpyTextEncoder.load(d)
    ids = tok(TEXTS).numpy()
    short = enc.encode_tokens(ids)
    full = enc.encode_tokens(ids, truncate=False)
    np.testing.assert_allclose(short, full, atol=2e-6)


def test_encoder_metadata_and_api(exported):
    _, _, d = exported["cliptool-tiny-quick"]
    meta = json.loads((d / textenc.META_FILE).read_text())
    assert meta["version"] == textenc.FORMAT_VERSION
    assert (meta["activation"], meta["pool_type"], meta["causal"]) == ("quick_gelu", "argmax", True)
    assert meta["text_projection_bias"] is True and meta["heads"] == 4 and meta["layers"] == 2
    assert meta["width"] == 64 and meta["output_dim"] == 48 and meta["context_length"] == 77
    assert (d / textenc.VOCAB_FILE).stat().st_size > 1_000_000
    assert is_text_encoder_dir(d) and not is_text_encoder_dir(d.parent)
    enc = NumpyTextEncoder.load(d)
    assert isinstance(enc._w["attn_in_weight"], np.memmap)  # memory-mapped, not read
    assert enc.encode("x").shape == (48,)
    assert enc.encode_batch([]).shape == (0, 48)
    with pytest.raises(TypeError):
        enc.encode_batch("not a list")
    for name, m in [("cliptool-tiny-custom", "gelu_tanh"), ("cliptool-tiny-gelu", "gelu")]:
        assert NumpyTextEncoder.load(exported[name][2]).activation == m
    assert NumpyTextEncoder.load(exported["cliptool-tiny-bidir"][2]).causal is False


def _blas_threads() -> list[tuple[str, int]]:
    """(library, threads) of numpy's BLAS, the one the encoder limits."""
    from threadpoolctl import ThreadpoolController

    from cliptool.textenc import numpy_blas

    return [(lib.filepath, lib.num_threads) for lib in numpy_blas(ThreadpoolController()).lib_controllers]


def test_blas_threads_limited_while_encoding_then_restored(exported, monkeypatch):
    from threadpoolctl import threadpool_limits

    if not _blas_threads():
        pytest.skip("no BLAS library threadpoolctl can control")
    with threadpool_limits(limits=3, user_api="blas"):
        before = _blas_threads()
        enc = NumpyTextEncoder.load(exported["cliptool-tiny-gelu"][2], blas_threads=1)
        during = []
        head = enc._head
        monkeypatch.setattr(enc, "_head", lambda pooled: (during.append(_blas_threads()), head(pooled))[1])
        enc.encode("a dog")
        assert during and all(n == 1 for _, n in during[0])
        assert _blas_threads() == before
        NumpyTextEncoder.load(exported["cliptool-tiny-gelu"][2], blas_threads=None).encode("a dog")
        assert _blas_threads() == before


def test_blas_limit_from_several_threads_is_restored(exported):
    """Encodes overlapping in threads (exits interleaved) leave the setting as it was."""
    import threading

    from threadpoolctl import threadpool_limits

    if not _blas_threads():
        pytest.skip("no BLAS library threadpoolctl can control")
    enc = NumpyTextEncoder.load(exported["cliptool-tiny-gelu"][2], blas_threads=1)
    with threadpool_limits(limits=3, user_api="blas"):
        before = _blas_threads()

        def work():
            for i in range(20):
                enc.encode(f"a dog in a park {i}")

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _blas_threads() == before


def test_shared_scope_restores_after_interleaved_exits():
    """Thread A enters, B enters, A leaves, B leaves: a per-thread save/restore would leave
    B's saved value (A's setting) in place; the shared scope restores the original."""
    setting = {"value": 8}

    def apply(v):
        old, setting["value"] = setting["value"], v
        return old

    scope = textenc.SharedScope(apply, lambda old: setting.update(value=old))
    a, b = scope(1), scope(2)
    a.__enter__()
    b.__enter__()
    assert setting["value"] == 1  # the first one in sets it, later ones share it
    a.__exit__(None, None, None)
    assert setting["value"] == 1  # B is still inside
    b.__exit__(None, None, None)
    assert setting["value"] == 8


def test_runtime_is_chosen_at_load(exported):
    d = exported["cliptool-tiny-gelu"][2]
    assert NumpyTextEncoder.load(d).runtime == "numpy"
    with pytest.raises(ValueError, match="runtime"):
        NumpyTextEncoder.load(d, runtime="gpu")
    pytest.importorskip("onnxruntime")
    enc = NumpyTextEncoder.load(d, runtime="onnxruntime")
    assert enc.runtime == "onnxruntime"
    enc.encode("a dog")
    assert enc.runtime == "onnxruntime"  # stays what was chosen


def test_float16_export(oc, exported, tmp_path):
    model, tok, _ = exported["cliptool-tiny-gelu"]
    d = tmp_path / "fp16"
    export_text_encoder(model, "cliptool-tiny-gelu", d, dtype="float16")
    assert np.load(d / "attn_in_weight.npy", mmap_mode="r").dtype == np.float16
    assert np.load(d / "ln_1_weight.npy", mmap_mode="r").dtype == np.float32
    _, ref = _reference(model, tok, TEXTS)
    cos = np.sum(NumpyTextEncoder.load(d).encode_batch(TEXTS) * ref, axis=1)
    print(f"float16 worst cosine {cos.min():.8f}")
    assert cos.min() > 0.999


def test_load_rejects_other_versions(exported, tmp_path):
    import shutil

    d = tmp_path / "enc"
    shutil.copytree(exported["cliptool-tiny-gelu"][2], d)
    meta = json.loads((d / textenc.META_FILE).read_text())
    meta["version"] = textenc.FORMAT_VERSION + 1
    (d / textenc.META_FILE).write_text(json.dumps(meta))
    assert not is_text_encoder_dir(d)
    with pytest.raises(ValueError, match="unsupported"):
        NumpyTextEncoder.load(d)
    with pytest.raises(FileNotFoundError):
        NumpyTextEncoder.load(tmp_path / "missing")


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_towers_raise(oc, tmp_path, name):
    model = _make_model(oc, name)
    with pytest.raises(NotImplementedError) as info:
        export_text_encoder(model, name, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unsupported_tokenizer_raises(oc, exported, tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    model = exported["cliptool-tiny-gelu"][0]
    with pytest.raises(NotImplementedError):
        export_text_encoder(model, "x", tmp_path / "a", tokenizer=SimpleTokenizer(reduction_mask="simple"))
    with pytest.raises(NotImplementedError):
        export_text_encoder(model, "x", tmp_path / "b", tokenizer=SimpleTokenizer(context_length=32))
    with pytest.raises(NotImplementedError):
        export_text_encoder(model, "x", tmp_path / "c", tokenizer=object())
    assert list(tmp_path.iterdir()) == []


def test_export_is_atomic(oc, exported, tmp_path, monkeypatch):
    model, _, _ = exported["cliptool-tiny-gelu"]
    other, _, _ = exported["cliptool-tiny-quick"]
    d = tmp_path / "enc"
    export_text_encoder(model, "cliptool-tiny-gelu", d)
    before = NumpyTextEncoder.load(d).encode("a dog")

    calls = []
    real_save = textenc._save_npy

    def failing_save(path, arr):
        calls.append(path)
        if len(calls) == 5:
            raise OSError("disk full")
        real_save(path, arr)

    monkeypatch.setattr(textenc, "_save_npy", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_text_encoder(other, "cliptool-tiny-quick", d)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no temp dirs left
    np.testing.assert_array_equal(NumpyTextEncoder.load(d).encode("a dog"), before)

    # a successful export replaces the old one
    export_text_encoder(other, "cliptool-tiny-quick", d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    assert NumpyTextEncoder.load(d).meta["model_name"] == "cliptool-tiny-quick"


# ------------------------------------------------------------------------------------------
# no torch
# ------------------------------------------------------------------------------------------


def test_encoding_never_imports_torch(exported):
    model, tok, d = exported["cliptool-tiny-gelu"]
    texts = ["a dog in a park", "café 😀 &amp; naïve"]  # second one takes the ftfy path
    code = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import cliptool.textenc as te\n"
        f"enc = te.NumpyTextEncoder.load({str(d)!r})\n"
        f"vecs = [enc.encode(t).tolist() for t in {texts!r}]\n"
        "bad = [m for m in ('torch', 'open_clip') if m in sys.modules]\n"
        "print(json.dumps({'bad': bad, 'vecs': vecs}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["bad"] == []
    _, ref = _reference(model, tok, texts)
    assert np.sum(np.array(out["vecs"]) * ref, axis=1).min() > 0.9999


@pytest.mark.skipif(not os.environ.get("CLIPTOOL_SLOW_TESTS"), reason="set CLIPTOOL_SLOW_TESTS=1 (~10 s)")
def test_real_size_vit_b_32(oc, tmp_path):
    """The full-size ViT-B-32 text tower (random weights): 12 layers, width 512, 8 heads."""
    import torch

    torch.manual_seed(0)
    model = oc.create_model("ViT-B-32", pretrained=None).eval()
    tok = oc.get_tokenizer("ViT-B-32")
    export_text_encoder(model, "ViT-B-32", tmp_path / "b32", tokenizer=tok)
    enc = NumpyTextEncoder.load(tmp_path / "b32")
    ids, ref = _reference(model, tok, TEXTS)
    np.testing.assert_array_equal(enc.tokenize(TEXTS), ids)
    assert np.sum(enc.encode_batch(TEXTS) * ref, axis=1).min() > 0.9999


# ------------------------------------------------------------------------------------------
# measurements on a real-size ViT-B-32 text tower (run this file directly)
# ------------------------------------------------------------------------------------------


def _bench(out_root: Path, runs: int) -> None:
    import time

    import open_clip
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    print(f"create ViT-B-32 (random weights): {time.perf_counter() - t0:.1f} s")
    tok = open_clip.get_tokenizer("ViT-B-32")
    queries = TEXTS + ["a dog in a park", "two people riding bicycles along the beach at sunset"]
    ids, ref = _reference(model, tok, queries)
    dirs = {}
    for dtype in ("float32", "float16"):
        d = dirs[dtype] = out_root / f"ViT-B-32-{dtype}"
        t0 = time.perf_counter()
        export_text_encoder(model, "ViT-B-32", d, dtype=dtype)
        print(f"\nexport {dtype}: {time.perf_counter() - t0:.1f} s -> {d}")
        total = 0
        for f in sorted(d.iterdir()):
            total += f.stat().st_size
            print(f"  {f.name:30s} {f.stat().st_size:>13,d}")
        print(f"  {'total':30s} {total:>13,d}")
        enc = NumpyTextEncoder.load(d)
        assert np.array_equal(enc.tokenize(queries), ids)
        got = enc.encode_batch(queries)
        cos = np.sum(got * ref, axis=1)
        full = enc.encode_tokens(ids, truncate=False)
        print(f"  worst cosine vs open_clip: {cos.min():.8f}  mean {cos.mean():.8f}  "
              f"max |diff| {np.abs(got - ref).max():.2e}")
        print(f"  truncated vs full-context forward: max |diff| {np.abs(full - got).max():.2e}")

    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "import cliptool.textenc as te\n"
        "v = te.NumpyTextEncoder.load(sys.argv[1]).encode(sys.argv[2])\n"
        "assert 'torch' not in sys.modules and v.shape == (512,)\n"
    )
    print(f"\ncold process wall time (python start + import + load + encode), {runs} runs:")
    for dtype, d in dirs.items():
        for text in ("a dog in a park", "café au lait", "a very long caption " * 20):
            _report_cold(f"{dtype} {text[:24]!r}", [sys.executable, "-c", code, str(d), text], runs)
    _report_cold("baseline: python -c 'import numpy'", [sys.executable, "-c", "import numpy"], runs)


def _report_cold(label: str, cmd: list[str], runs: int) -> None:
    """Median wall and CPU (user+sys) seconds of `cmd` in fresh processes. CPU time shows the
    intrinsic cost when other processes compete for the cores and inflate the wall time."""
    import resource
    import time

    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    print(f"  {label:42s} wall median {np.median(walls):.3f} s (min {min(walls):.3f}, "
          f"max {max(walls):.3f})  cpu median {np.median(cpus):.3f} s")


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--out", type=Path, default=None, help="export directory (default: a temp dir)")
    args = ap.parse_args()
    if args.out:
        _bench(args.out, args.runs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _bench(Path(tmp), args.runs)
