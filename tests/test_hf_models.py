"""Model folders and hub names: Hugging Face CLIP and Chinese-CLIP folders (made here with
transformers, seeded random weights, save_pretrained), open_clip folders and hf-hub: names
give transformers' own vectors, on the fast paths too; an unusable one says what is missing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cliptool.models.clip import ClipModel
from cliptool.models.spec import ModelSpec
from cliptool.errors import ModelUnavailableError

from conftest import ok, one_line_error

TEXTS = ["a dog in a park", "A RED star, on the beach!", "公园里的狗", "一只猫在跑"]
CHINESE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"公园里的狗猫在跑一只红色蓝星", "a", "dog", "park", "cat",
                 "red", "star", "##s"]


def _tiny_tower(**extra: object) -> dict[str, object]:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, **extra}


def _clip_tokenizer(out: Path) -> None:
    """CLIP's BPE tokenizer saved by transformers, built from open_clip's bundled vocabulary (the
    openai folders carry the same one)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in simple.encoder.items()}
    merges = [tuple(m) for m in sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)]
    CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(str(out))


def _write_clip_folder(out: Path, act: str, seed: int, eos: int = 49407) -> Path:
    """A tiny transformers CLIPModel saved with save_pretrained, with CLIP's tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=_tiny_tower(max_position_embeddings=77, vocab_size=49408, hidden_act=act, eos_token_id=eos),
        vision_config=_tiny_tower(intermediate_size=48, num_attention_heads=4, image_size=32, patch_size=8,
                                  hidden_act=act),
        projection_dim=16)
    CLIPModel(config).save_pretrained(str(out))
    _clip_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers CLIPModel folder (quick_gelu, as openai's), with a preprocessor config."""
    out = _write_clip_folder(tmp_path_factory.mktemp("hf") / "clip-vit-tiny", "quick_gelu", 0)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
        "crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32}}))
    return out


@pytest.fixture(scope="module")
def chinese_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers ChineseCLIPModel folder: BERT text tower, BertTokenizer vocab.txt."""
    import torch
    from transformers import BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel

    out = tmp_path_factory.mktemp("hf") / "chinese-clip-tiny"
    torch.manual_seed(1)
    config = ChineseCLIPConfig(
        text_config=_tiny_tower(vocab_size=len(CHINESE_VOCAB), max_position_embeddings=64),
        vision_config=_tiny_tower(image_size=32, patch_size=8), projection_dim=16)
    ChineseCLIPModel(config).save_pretrained(str(out))
    (out / "vocab.txt").write_text("\n".join(CHINESE_VOCAB) + "\n", encoding="utf-8")
    BertTokenizer(str(out / "vocab.txt")).save_pretrained(str(out))
    (out / "tokenizer.json").unlink()  # as OFA-Sys/chinese-clip-vit-base-patch16 has it: vocab.txt alone
    return out


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(3)]


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _transformers_vectors(folder: Path, pixels: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """get_image_features / get_text_features of the folder loaded by transformers, normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(folder)).eval()
    tokens = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=torch.from_numpy(pixels))
        text = model.get_text_features(**tokens)
    image, text = (getattr(x, "pooler_output", x) for x in (image, text))  # an output object in transformers 5
    return _normalised(image.numpy()), _normalised(text.numpy())


@pytest.mark.parametrize("kind", ["clip", "chinese_clip"])
def test_a_folder_gives_the_vectors_of_transformers(kind: str, clip_folder: Path, chinese_folder: Path) -> None:
    folder = clip_folder if kind == "clip" else chinese_folder
    model = ClipModel(ModelSpec(str(folder), precision="fp32")).wait()
    pixels = np.stack([model.preprocess(im) for im in _images()])
    image, text = _transformers_vectors(folder, pixels, TEXTS)
    np.testing.assert_allclose(model.encode_preprocessed(pixels), image, atol=1e-4)
    np.testing.assert_allclose(model.encode_text(TEXTS), text, atol=1e-4)
    assert model.image_size == 32
    if kind == "clip":  # preprocessor_config.json's normalisation; OpenAI's when there is none
        np.testing.assert_allclose(model._mean, [0.5, 0.4, 0.3], rtol=1e-6)
        np.testing.assert_allclose(model._std, [0.2, 0.25, 0.3], rtol=1e-6)
    else:
        np.testing.assert_allclose(model._mean, [0.48145466, 0.4578275, 0.40821073], rtol=1e-6)
    assert np.abs(text[0] - text[2]).max() > 1e-3  # the texts are told apart: the check has teeth


def test_a_gelu_clip_folder_gives_the_vectors_of_transformers(tmp_path: Path) -> None:
    """Exact GELU (laion's models in the transformers layout) rather than quick_gelu; and an
    eos_token_id that is not the highest id, where transformers pools at its first occurrence."""
    import torch

    folder = _write_clip_folder(tmp_path / "clip-gelu", "gelu", 2, eos=518)  # 518: "the</w>"
    model = ClipModel(ModelSpec(str(folder), precision="fp32")).wait()
    assert type(model.torch_model.visual.transformer.resblocks[0].mlp.gelu) is torch.nn.GELU
    assert model.torch_model.text_pool_type == "eos"
    pixels = np.stack([model.preprocess(im) for im in _images()])
    image, text = _transformers_vectors(folder, pixels, TEXTS)
    np.testing.assert_allclose(model.encode_preprocessed(pixels), image, atol=1e-4)
    np.testing.assert_allclose(model.encode_text(TEXTS), text, atol=1e-4)


@pytest.mark.parametrize("kind", ["clip", "chinese_clip"])
def test_a_folder_runs_the_int8_image_tower(kind: str, clip_folder: Path, chinese_folder: Path) -> None:
    from cliptool.models import onnx_tower

    folder = clip_folder if kind == "clip" else chinese_folder
    exact = ClipModel(ModelSpec(str(folder), precision="fp32")).wait()
    fast = ClipModel(ModelSpec(str(folder), precision="int8")).wait()
    assert fast._tower is not None and onnx_tower.is_cached(fast.spec.identity())
    cosines = (fast.encode_images(_images()) * exact.encode_images(_images())).sum(axis=1)
    assert cosines.min() > 0.98, cosines


def test_chinese_clip_text_tower_is_a_module_of_token_ids(chinese_folder: Path) -> None:
    """What a generic text exporter takes: token ids -> normalised vectors, and the tokenizer."""
    import torch

    from cliptool.models.hf import text_tower

    model = ClipModel(ModelSpec(str(chinese_folder), precision="fp32")).wait()
    module, tokenizer = text_tower(model.torch_model, model._tokenizer)
    ids = tokenizer(TEXTS)
    assert ids.dtype == torch.int64 and ids.shape == (len(TEXTS), 52)
    with torch.no_grad():
        vectors = module(ids).numpy()
    _, reference = _transformers_vectors(chinese_folder, np.zeros((1, 3, 32, 32), np.float32), TEXTS)
    np.testing.assert_allclose(vectors, reference, atol=1e-4)
    # the converted text tower's folder carries a tokenizer.json: `tokenizers` alone gives the ids
    from tokenizers import Tokenizer

    from cliptool.models.hf import prepare

    text_dir = json.loads(prepare(str(chinese_folder)).config.read_text())["text_cfg"]["hf_tokenizer_name"]
    fast = Tokenizer.from_file(str(Path(text_dir) / "tokenizer.json"))
    for text, row in zip(TEXTS, ids.tolist()):
        assert fast.encode(text).ids == [i for i in row if i != 0]


def test_a_folder_is_identified_by_its_files(tmp_path: Path, clip_folder: Path) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(clip_folder, copy)
    identity = ModelSpec(str(clip_folder)).identity()
    assert identity.startswith("hf-folder:") and ModelSpec(str(copy)).identity() == identity
    pre = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**pre, "image_mean": [0.5, 0.5, 0.5]}))
    assert ModelSpec(str(copy)).identity() != identity
    spec = ModelSpec(str(copy)).resolved()
    assert spec.pretrained == "" and spec.name == str(copy.resolve())
    assert ModelSpec.from_record(spec.to_dict()).identity() == spec.identity()


def test_index_and_search_with_a_folder(cli_here, tmp_path: Path, folder: Path, index_dir: Path,
                                        clip_folder: Path) -> None:
    """The index records the folder; search needs no model options, and its exported text tower
    gives transformers' text vectors; a moved folder is the same model. (The commands run in
    this process, where torch and transformers are loaded already; the hub test below runs
    `cliptool index` on a model of this kind in a new process.)"""
    from cliptool.search.searcher import Searcher

    cli = cli_here
    ok(cli("index", folder, "--model", clip_folder))
    status = json.loads(ok(cli("status", "--json")).stdout)
    assert status["model"]["name"] == str(clip_folder.resolve())
    hits = json.loads(ok(cli("search", "a dog in a park", "--json")).stdout)["results"]
    assert hits and all(hit["path"].startswith(str(folder)) for hit in hits)
    searcher = Searcher(index_dir)
    assert searcher.exported_text_encoder() is not None  # the fast, torch-free text path
    _, reference = _transformers_vectors(clip_folder, np.zeros((1, 3, 32, 32), np.float32), TEXTS[:2])
    np.testing.assert_allclose(np.stack([searcher.text_vector(t) for t in TEXTS[:2]]), reference, atol=1e-4)
    moved = tmp_path / "moved-model"
    shutil.copytree(clip_folder, moved)
    again = ok(cli("index", folder, "--model", moved))
    assert "3 unchanged" in again.stderr, again.stderr


def test_a_chinese_query_on_a_chinese_clip_index(cli_here, folder: Path, index_dir: Path,
                                                 chinese_folder: Path) -> None:
    """Indexed with a Chinese-CLIP folder (`cliptool index` in this process), a search's query
    vectors are transformers' (on the fast text path where the text exporter covers BERT towers,
    else in open_clip)."""
    from cliptool.search.searcher import Searcher

    ok(cli_here("index", folder, "--model", chinese_folder))
    searcher = Searcher(index_dir)
    _, reference = _transformers_vectors(chinese_folder, np.zeros((1, 3, 32, 32), np.float32), TEXTS)
    np.testing.assert_allclose(np.stack([searcher.text_vector(t) for t in TEXTS]), reference, atol=1e-4)
    hits = searcher.search(searcher.text_vector("公园里的狗"), top=3)
    assert hits and all(hit.path.startswith(str(folder)) for hit in hits)


# -- what an unusable folder or name says ----------------------------------------------------------


def _load_error(name: str, pretrained: str = "") -> str:
    with pytest.raises(ModelUnavailableError) as info:
        ClipModel(ModelSpec(name, pretrained, "fp32")).wait()
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def _broken(tmp_path: Path, source: Path, remove: tuple[str, ...] = (), write: dict[str, str] | None = None) -> Path:
    out = tmp_path / f"broken-{source.name}"
    shutil.copytree(source, out)
    for name in remove:
        (out / name).unlink()
    for name, text in (write or {}).items():
        (out / name).write_text(text)
    return out


def test_unusable_folders_say_what_is_missing(tmp_path: Path, clip_folder: Path, chinese_folder: Path) -> None:
    assert _load_error(str(tmp_path / "no-such-folder")).startswith("model folder not found: ")
    (tmp_path / "empty").mkdir()
    assert "no config.json in model folder" in _load_error(str(tmp_path / "empty"))
    cases = {
        "is not valid JSON": _broken(tmp_path / "a", clip_folder, write={"config.json": "{not json"}),
        "unknown architecture 'BertModel'": _broken(
            tmp_path / "b", clip_folder, write={"config.json": json.dumps({"architectures": ["BertModel"]})}),
        "no weights file in model folder": _broken(tmp_path / "c", clip_folder, remove=("model.safetensors",)),
        "no tokenizer files in model folder": _broken(tmp_path / "d", clip_folder, remove=("tokenizer.json",)),
        "(looked for vocab.txt": _broken(tmp_path / "e", chinese_folder, remove=("vocab.txt",)),
        "the file is damaged, truncated or not a model checkpoint": _broken(
            tmp_path / "f", clip_folder, write={"model.safetensors": "garbage"}),
    }
    for needle, broken in cases.items():
        assert needle in _load_error(str(broken)), needle


def test_what_open_clip_cannot_hold_is_refused(tmp_path: Path, clip_folder: Path) -> None:
    tokenizer = json.loads((clip_folder / "tokenizer.json").read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:-1]
    broken = _broken(tmp_path / "a", clip_folder, write={"tokenizer.json": json.dumps(tokenizer)})
    assert "is not CLIP's standard BPE vocabulary" in _load_error(str(broken))
    config = json.loads((clip_folder / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        config[tower]["hidden_act"] = "gelu_new"
    broken = _broken(tmp_path / "b", clip_folder, write={"config.json": json.dumps(config)})
    assert "cannot be converted to open_clip: vision activation 'gelu_new'" in _load_error(str(broken))


def test_pretrained_does_not_apply_to_a_folder(clip_folder: Path, tiny_model: tuple[Path, Path]) -> None:
    assert "--pretrained does not apply" in _load_error(str(clip_folder), str(tiny_model[1]))


def test_index_with_an_unusable_folder_exits_with_one_line(cli, tmp_path: Path, folder: Path,
                                                          clip_folder: Path) -> None:
    broken = _broken(tmp_path, clip_folder, remove=("model.safetensors",))
    one_line_error(cli("index", folder, "--model", broken), 6, "no weights file in model folder")


# -- hf-hub: names: the Hugging Face cache first, the network only for a download ---------------------


def _cache_repo(hub: Path, repo: str, files: dict[str, Path | str]) -> None:
    """A repository's snapshot laid out as huggingface_hub caches it."""
    root = hub / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123456789abcdef")
    for name, source in files.items():
        if isinstance(source, Path):
            shutil.copyfile(source, snapshot / name)
        else:
            (snapshot / name).write_text(source)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip_folder: Path,
              tiny_model: tuple[Path, Path]) -> Path:
    """A Hugging Face cache holding a transformers CLIP repository and an open_clip one."""
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    _cache_repo(hub, "cliptool/tiny-hf-clip", {p.name: p for p in clip_folder.iterdir()})
    config, ckpt = tiny_model
    open_clip_config = {"model_cfg": json.loads(config.read_text()),
                        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    _cache_repo(hub, "cliptool/tiny-open-clip", {"open_clip_config.json": json.dumps(open_clip_config),
                                                 "open_clip_pytorch_model.bin": ckpt})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return hub


def test_cached_hub_models_load_without_the_network(hub_cache: Path, network: list, clip_folder: Path,
                                                    tiny_model: tuple[Path, Path]) -> None:
    hub_clip = ClipModel(ModelSpec("hf-hub:cliptool/tiny-hf-clip", precision="fp32")).wait()
    folder = ClipModel(ModelSpec(str(clip_folder), precision="fp32")).wait()
    np.testing.assert_allclose(hub_clip.encode_text(TEXTS), folder.encode_text(TEXTS), atol=1e-6)
    assert hub_clip.spec.identity() == "hf-hub:cliptool/tiny-hf-clip"

    reference = ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "fp32")).wait()
    hub_open_clip = ClipModel(ModelSpec("hf-hub:cliptool/tiny-open-clip", precision="fp32")).wait()
    np.testing.assert_allclose(hub_open_clip.encode_text(TEXTS), reference.encode_text(TEXTS), atol=1e-6)
    np.testing.assert_allclose(hub_open_clip._mean, 0.5)  # its open_clip_config.json's preprocessing
    weights_only = ClipModel(ModelSpec(str(tiny_model[0]), "hf-hub:cliptool/tiny-open-clip", "fp32")).wait()
    np.testing.assert_allclose(weights_only.encode_text(TEXTS), reference.encode_text(TEXTS), atol=1e-6)
    assert network == []


def test_index_with_a_cached_hub_model_offline(cli, cli_here, tmp_path: Path, folder: Path, hub_cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE is set (as the cli fixture does): the cached snapshot is all it needs.
    The index run goes through the CLI in this process (torch and transformers are loaded here
    already), offline as a new process would be; the refusal runs in a new process."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what a new process reads from the variable
    env = {"HF_HUB_CACHE": str(hub_cache)}
    ok(cli_here("index", folder, "--model", "hf-hub:cliptool/tiny-hf-clip"))
    status = json.loads(ok(cli("status", "--json", env=env)).stdout)
    assert status["model"]["name"] == "hf-hub:cliptool/tiny-hf-clip" and status["scenes"] > 0
    one_line_error(cli("index", folder, "--model", "hf-hub:cliptool/elsewhere",
                       env={**env, "CLIPTOOL_INDEX_DIR": str(tmp_path / "other")}), 6,
                   "not in the local Hugging Face cache and HF_HUB_OFFLINE is set")


def test_uncached_hub_models_say_why_they_cannot_be_had(hub_cache: Path, network: list,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tiny_model: tuple[Path, Path]) -> None:
    message = _load_error("hf-hub:cliptool/not-downloaded")
    assert message.startswith("hf-hub:cliptool/not-downloaded is not in the local Hugging Face cache and "
                              "huggingface.co cannot be reached (no network?)"), message
    assert "--model /path/to/folder" in message
    assert network == [("huggingface.co", 443)]
    weights = _load_error(str(tiny_model[0]), "hf-hub:cliptool/not-downloaded")
    assert "are not in the local cache and huggingface.co cannot be reached" in weights, weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    network.clear()
    assert "HF_HUB_OFFLINE is set" in _load_error("hf-hub:cliptool/not-downloaded")
    assert network == []
    assert "write hf-hub:ORG/NAME" in _load_error("hf-hub:just-a-name")


def test_a_config_names_its_text_tower_folder_relative_to_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--model CONFIG.json` whose Hugging Face text tower is `"hf_model_name": "xlmr"`: found
    beside the config wherever cliptool runs, and its tokenizer is part of the model's identity."""
    from conftest import data_module

    config, ckpt = data_module("tiny_multilingual").write_tiny_multilingual_model(tmp_path / "model")
    cfg = json.loads(config.read_text())
    cfg["text_cfg"].update(hf_model_name="xlmr", hf_tokenizer_name="./xlmr")
    relative = config.with_name("RelativeXlmrCLIP.json")
    relative.write_text(json.dumps(cfg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    texts = ["公园里的狗", "a dog in a park"]
    want = ClipModel(ModelSpec(str(config), str(ckpt), "fp32")).encode_text(texts)
    spec = ModelSpec(str(relative), str(ckpt), "fp32")
    np.testing.assert_allclose(ClipModel(spec).encode_text(texts), want, atol=1e-5)
    before = spec.identity()
    tokenizer = config.parent / "xlmr" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"公"', '"公 "', 1) + " ")
    assert spec.identity() != before
