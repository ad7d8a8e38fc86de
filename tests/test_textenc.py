"""Tests for cliptool.models.text: text towers exported to ONNX, run torch-free in ONNX Runtime.

Small open_clip models with seeded random weights (CLIP text transformers of several kinds and
an XLM-RoBERTa tower from Hugging Face transformers) are exported and compared with open_clip
itself: token ids exactly, vectors within 1e-4. open_clip/torch are only imported here, in the
test process; a subprocess checks that loading and encoding never imports torch.
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

from cliptool.models import text as textenc  # noqa: E402
from cliptool.models.text import (  # noqa: E402
    ClipBpeTokenizer,
    OnnxTextEncoder,
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


CHINESE = ["公园里的狗", "一只狗在公园里跑", "红色的圆圈和蓝色的正方形", "a dog 在公园里", "沙发上的猫 " * 40]


def _tiny_cfg(**text_extra):
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    text.update(text_extra)
    return {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 32},
        "text_cfg": text,
    }


# name -> (model config, runs on the prefix up to the pooled token). Together they cover GELU /
# QuickGELU / tanh-GELU, argmax / eos / last pooling, causal and bidirectional attention, layer
# scale, a projection with bias, query/key norms (open_clip's own attention class), an appended
# CLS token (CoCa style), and both CLIP and CustomTextCLIP model classes.
CONFIGS = {
    "cliptool-tiny-gelu": (_tiny_cfg(), True),
    "cliptool-tiny-quick": ({**_tiny_cfg(heads=4, ls_init_value=0.5, proj_bias=True), "quick_gelu": True}, True),
    "cliptool-tiny-custom": ({**_tiny_cfg(pool_type="eos", eos_id=49407, act_kwargs={"approximate": "tanh"}),
                              "custom_text": True}, True),
    "cliptool-tiny-bidir": (_tiny_cfg(no_causal_mask=True, pool_type="last", layers=1), False),
    "cliptool-tiny-qknorm": (_tiny_cfg(qk_norm=True), None),  # prefix if its attention traces so, else full
    "cliptool-tiny-coca": ({**_tiny_cfg(embed_cls=True), "custom_text": True}, False),
}


@pytest.fixture(scope="module")
def oc(tmp_path_factory):
    """open_clip with the test configs registered."""
    open_clip = pytest.importorskip("open_clip")
    cfg_dir = tmp_path_factory.mktemp("configs")
    for name, (cfg, _) in CONFIGS.items():
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
    """name -> (model, open_clip tokenizer, export dir) for every config."""
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


@pytest.fixture(scope="module")
def hf_tower(tmp_path_factory):
    """(model, open_clip HFTokenizer, export dir) of the tiny XLM-RoBERTa CLIP (data/tiny_multilingual.py)."""
    from conftest import data_module

    from cliptool.models.clip import ClipModel
    from cliptool.models.spec import ModelSpec

    config, ckpt = data_module("tiny_multilingual").write_tiny_multilingual_model(tmp_path_factory.mktemp("xlmr"))
    clip = ClipModel(ModelSpec(str(config), str(ckpt), "fp32"))
    model, tok = clip.torch_model, clip._tokenizer
    d = tmp_path_factory.mktemp("hf-export") / "enc"
    export_text_encoder(model, clip.spec.model_name, d, tokenizer=tok)
    return model, tok, d


# ------------------------------------------------------------------------------------------
# tokenizers
# ------------------------------------------------------------------------------------------


def test_token_ids_match_open_clip(exported):
    _, tok, d = exported["cliptool-tiny-gelu"]
    enc = OnnxTextEncoder.load(d)
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
    enc = OnnxTextEncoder.load(d)
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


def test_hf_token_ids_match_open_clip(hf_tower):
    """tokenizers on the saved tokenizer.json gives open_clip's HFTokenizer ids, unpadded."""
    _, tok, d = hf_tower
    enc = OnnxTextEncoder.load(d)
    assert enc.kind == "hf" and (d / textenc.HF_TOKENIZER_FILE).is_file()
    for text in TEXTS + CHINESE:
        want = tok([text]).numpy()[0]
        got = enc.tokenize([text])[0]
        assert 0 < len(got) <= 77 and got.tolist() == want[: len(got)].tolist(), text
        assert (want[len(got):] == 1).all(), text  # the rest is XLM-R's padding (id 1)
    batch = enc.tokenize(CHINESE)
    assert batch.shape[1] == max(len(enc.tokenize([t])[0]) for t in CHINESE)


# ------------------------------------------------------------------------------------------
# encoder
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_embeddings_match_open_clip(exported, name):
    model, tok, d = exported[name]
    enc = OnnxTextEncoder.load(d)
    _, ref = _reference(model, tok, TEXTS)
    got = enc.encode_batch(TEXTS)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # one text at a time (its own prefix length) gives the same vectors as the batch
    single = np.stack([enc.encode(t) for t in TEXTS[:8]])
    np.testing.assert_allclose(single, ref[:8], atol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_causal_towers_run_on_the_prefix(exported, name):
    """A causal tower pooling one token is exported with a dynamic length and runs on the tokens
    up to it; the others run on the full context."""
    _, _, d = exported[name]
    enc = OnnxTextEncoder.load(d)
    expected = CONFIGS[name][1]
    if expected is not None:
        assert enc.prefix is expected
    inputs = enc._session.get_inputs()[0].shape
    assert (inputs[1] == 77) is (not enc.prefix)


def test_hf_embeddings_match_open_clip(hf_tower):
    model, tok, d = hf_tower
    enc = OnnxTextEncoder.load(d)
    texts = CHINESE + TEXTS
    _, ref = _reference(model, tok, texts)
    got = enc.encode_batch(texts)
    assert got.shape == ref.shape == (len(texts), 64)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(enc.encode("公园里的狗"), ref[0], atol=1e-4)


def test_the_saved_model_is_onnx_runtime_optimised(exported, hf_tower):
    """The export keeps the graph ONNX Runtime optimised (fused kernels), weights beside it."""
    import onnx

    for d in (exported["cliptool-tiny-gelu"][2], hf_tower[2]):
        graph = onnx.load(str(d / textenc.MODEL_FILE), load_external_data=False).graph
        fused = {n.op_type for n in graph.node if n.domain == "com.microsoft"}
        assert fused, sorted({n.op_type for n in graph.node})
        assert (d / textenc.WEIGHTS_FILE).stat().st_size > 100_000
        assert sorted(p.name for p in d.iterdir() if p.name.startswith("raw")) == []


def test_encoder_metadata_and_api(exported):
    _, _, d = exported["cliptool-tiny-quick"]
    meta = json.loads((d / textenc.META_FILE).read_text())
    assert meta["version"] == textenc.FORMAT_VERSION and meta["format"] == textenc.FORMAT_NAME
    assert (meta["pool_type"], meta["prefix"], meta["output_dim"], meta["context_length"]) == ("argmax", True, 48, 77)
    assert meta["tokenizer"] == {"type": "clip_bpe", "file": textenc.VOCAB_FILE, "clean": "lower"}
    assert (d / textenc.VOCAB_FILE).stat().st_size > 1_000_000
    assert is_text_encoder_dir(d) and not is_text_encoder_dir(d.parent)
    enc = OnnxTextEncoder.load(d, threads=1)
    assert enc.runtime == "onnxruntime"
    assert enc.encode("x").shape == (48,)
    assert enc.encode_batch([]).shape == (0, 48)
    with pytest.raises(TypeError):
        enc.encode_batch("not a list")


def test_the_int8_variant_is_made_checked_and_close_to_the_exact_tower(exported, hf_tower):
    """Each export carries an int8 tower (MatMul weights quantised), recorded with the least
    cosine it reached; it encodes near the exact tower, and only when asked for."""
    import onnx

    texts = CHINESE + TEXTS
    for d in (exported["cliptool-tiny-gelu"][2], hf_tower[2]):
        meta = json.loads((d / textenc.META_FILE).read_text())
        assert meta["int8"]["file"] == textenc.INT8_MODEL_FILE
        assert textenc.INT8_MIN_COSINE <= meta["int8"]["min_cosine"] < 1.0
        graph = onnx.load(str(d / textenc.INT8_MODEL_FILE), load_external_data=False).graph
        assert any("Integer" in n.op_type or "Quant" in n.op_type for n in graph.node)
        exact, int8 = OnnxTextEncoder.load(d), OnnxTextEncoder.load(d, precision="int8")
        assert (exact.precision, int8.precision) == ("fp32", "int8")
        a, b = exact.encode_batch(texts), int8.encode_batch(texts)
        cosines = (a * b).sum(axis=1)
        assert cosines.min() >= 0.99 and not np.allclose(a, b, atol=1e-6)
        assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_an_export_without_an_int8_variant_says_why(exported, tmp_path):
    import shutil

    d = tmp_path / "enc"
    shutil.copytree(exported["cliptool-tiny-gelu"][2], d, copy_function=os.link)  # as an index's copy is
    meta = json.loads((d / textenc.META_FILE).read_text())
    del meta["int8"]  # as an export made before int8 towers
    (d / textenc.META_FILE).unlink()
    (d / textenc.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="older than int8 towers"):
        OnnxTextEncoder.load(d, precision="int8")
    with pytest.raises(ValueError, match="precision must be one of fp32, int8"):
        OnnxTextEncoder.load(d, precision="int4")
    (d / textenc.INT8_MODEL_FILE).unlink()
    entry = textenc.add_int8_variant(d)  # hard-linked weights too (onnx refuses to read those): it copies them
    assert entry["file"] == textenc.INT8_MODEL_FILE and (d / textenc.INT8_MODEL_FILE).is_file()
    assert OnnxTextEncoder.load(d, precision="int8").encode("a dog").shape == (48,)


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


def test_load_rejects_other_versions(exported, tmp_path):
    import shutil

    d = tmp_path / "enc"
    shutil.copytree(exported["cliptool-tiny-gelu"][2], d)
    meta = json.loads((d / textenc.META_FILE).read_text())
    meta["version"] = textenc.FORMAT_VERSION + 1
    (d / textenc.META_FILE).write_text(json.dumps(meta))
    assert not is_text_encoder_dir(d)
    with pytest.raises(ValueError, match="unsupported"):
        OnnxTextEncoder.load(d)
    with pytest.raises(FileNotFoundError):
        OnnxTextEncoder.load(tmp_path / "missing")


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------


def test_unsupported_tokenizer_raises(oc, exported, tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    model = exported["cliptool-tiny-gelu"][0]
    with pytest.raises(NotImplementedError, match="reduction mask"):
        export_text_encoder(model, "x", tmp_path / "a", tokenizer=SimpleTokenizer(reduction_mask="simple"))
    with pytest.raises(NotImplementedError, match="context length"):
        export_text_encoder(model, "x", tmp_path / "b", tokenizer=SimpleTokenizer(context_length=32))
    with pytest.raises(NotImplementedError) as info:
        export_text_encoder(model, "x", tmp_path / "c", tokenizer=object())
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_an_export_that_differs_from_open_clip_is_rejected(oc, exported, tmp_path, monkeypatch):
    model, tok, _ = exported["cliptool-tiny-gelu"]
    monkeypatch.setattr(textenc, "ATOL", 0.0)  # nothing is exact to the last bit
    with pytest.raises(NotImplementedError, match="differs from open_clip"):
        export_text_encoder(model, "cliptool-tiny-gelu", tmp_path / "out", tokenizer=tok)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_export_is_atomic(oc, exported, tmp_path, monkeypatch):
    model, tok, _ = exported["cliptool-tiny-gelu"]
    other, _, _ = exported["cliptool-tiny-quick"]
    d = tmp_path / "enc"
    export_text_encoder(model, "cliptool-tiny-gelu", d, tokenizer=tok)
    before = OnnxTextEncoder.load(d).encode("a dog")

    def failing_check(folder, *args):
        assert (folder / textenc.MODEL_FILE).is_file()  # written, not yet in place
        raise OSError("disk full")

    monkeypatch.setattr(textenc, "_check_export", failing_check)
    with pytest.raises(OSError, match="disk full"):
        export_text_encoder(other, "cliptool-tiny-quick", d, tokenizer=tok)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]  # no temp dirs left
    np.testing.assert_array_equal(OnnxTextEncoder.load(d).encode("a dog"), before)

    # a successful export replaces the old one
    export_text_encoder(other, "cliptool-tiny-quick", d, tokenizer=tok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    assert OnnxTextEncoder.load(d).meta["model_name"] == "cliptool-tiny-quick"


# ------------------------------------------------------------------------------------------
# no torch
# ------------------------------------------------------------------------------------------


def test_encoding_never_imports_torch(exported, hf_tower):
    model, tok, d = exported["cliptool-tiny-gelu"]
    hf_model, hf_tok, hf_d = hf_tower
    texts = ["a dog in a park", "café 😀 &amp; naïve", "公园里的狗"]  # the second and third take the ftfy path
    code = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "import cliptool.models.text as te\n"
        f"vecs = [[te.OnnxTextEncoder.load(d).encode(t).tolist() for t in {texts!r}] for d in sys.argv[1:]]\n"
        "bad = [m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules]\n"
        "print(json.dumps({'bad': bad, 'vecs': vecs}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code, str(d), str(hf_d)], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["bad"] == []
    np.testing.assert_allclose(np.array(out["vecs"][0]), _reference(model, tok, texts)[1], atol=1e-4)
    np.testing.assert_allclose(np.array(out["vecs"][1]), _reference(hf_model, hf_tok, texts)[1], atol=1e-4)


@pytest.mark.skipif(not os.environ.get("CLIPTOOL_SLOW_TESTS"), reason="set CLIPTOOL_SLOW_TESTS=1 (~30 s)")
def test_real_size_vit_b_32(oc, tmp_path):
    """The full-size ViT-B-32 text tower (random weights): 12 layers, width 512, 8 heads."""
    import torch

    torch.manual_seed(0)
    model = oc.create_model("ViT-B-32", pretrained=None).eval()
    tok = oc.get_tokenizer("ViT-B-32")
    export_text_encoder(model, "ViT-B-32", tmp_path / "b32", tokenizer=tok)
    enc = OnnxTextEncoder.load(tmp_path / "b32")
    ids, ref = _reference(model, tok, TEXTS)
    np.testing.assert_array_equal(enc.tokenize(TEXTS), ids)
    np.testing.assert_allclose(enc.encode_batch(TEXTS), ref, atol=1e-4)
