"""Model folders and hub names: the CLIP models people already keep on disk.

`--model` takes, besides open_clip's own model names and config files:

- a Hugging Face transformers folder, as `save_pretrained` lays it out: `config.json` of a
  `CLIPModel` (as `openai/clip-vit-base-patch32`) or a `ChineseCLIPModel` (as
  `OFA-Sys/chinese-clip-vit-base-patch16`), weights in `model.safetensors` or
  `pytorch_model.bin`, and tokenizer files;
- an open_clip folder (`open_clip_config.json` and `open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin`), as open_clip publishes models on the hub;
- `hf-hub:ORG/NAME`, a hub repository of either layout: taken from the Hugging Face cache
  when it is there (no network), else downloaded.

A transformers folder is converted once into open_clip's layout: an open_clip model config
built from its config.json and its state dict renamed (q/k/v projections packed into
`in_proj`, projections transposed) and saved as safetensors in the user cache, keyed by the
folder's file fingerprints. Chinese-CLIP's BERT text tower becomes open_clip's Hugging Face
text tower (`HFTextEncoder`, CLS pooling, linear projection) with its config and tokenizer
copied into the cache entry. From then on the model is an ordinary open_clip model, so the
int8 image tower and the exported text tower work for it unchanged. Only the conversion
imports transformers (to read a config with its defaults).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cliptool.config import cache_entry, publish_cache_entry
from cliptool.errors import ModelUnavailableError

HUB_PREFIX = "hf-hub:"
CONVERSION_VERSION = 1
KINDS = {"CLIPModel": "clip", "ChineseCLIPModel": "chinese_clip"}  # config.json architectures
_MODEL_TYPES = {"clip": "clip", "chinese_clip": "chinese_clip"}  # config.json model_type, when no architectures
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
# tokenizer files: one of the sets is needed; the extras are copied and fingerprinted when present
_TOKENIZER_SETS = {"clip": (("vocab.json", "merges.txt"), ("tokenizer.json",)),
                   "chinese_clip": (("vocab.txt",), ("tokenizer.json",))}
_TOKENIZER_EXTRAS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
PREPROCESSOR_CONFIG = "preprocessor_config.json"
CHINESE_CLIP_CONTEXT = 52  # the text length Chinese-CLIP was trained with
_META_FILE = "meta.json"
_WEIGHTS_FILE = "weights.safetensors"
_TEXT_DIR = "text"
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def is_hub_name(name: str) -> bool:
    """Whether `name` is an `hf-hub:` name."""
    return name.startswith(HUB_PREFIX)


def is_model_source(name: str) -> bool:
    """Whether `--model NAME` names a model folder or an `hf-hub:` repository (rather than an
    open_clip model name or config JSON). A name with a path separator that is not a .json file
    is taken for a folder, so a mistyped folder is said to be missing."""
    if is_hub_name(name):
        return True
    if name.endswith(".json"):
        return False
    return os.sep in name or name.startswith("~") or Path(name).is_dir()


def registry_name(name: str) -> str:
    """The name a folder's or hub repository's model is registered under in open_clip: unique
    per folder path (or repository), so it never shadows a built-in or another folder."""
    if is_hub_name(name):
        return "hf-hub-" + hub_repo(name).replace("/", "--")
    folder = Path(name).expanduser().resolve()
    return f"{folder.name or 'model'}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


def resolved_name(name: str) -> str:
    """A folder as an absolute path (hub names as they are)."""
    return name if is_hub_name(name) else str(Path(name).expanduser().resolve())


def hub_repo(name: str) -> str:
    """ORG/NAME of an `hf-hub:` name; a one-line error for anything else."""
    repo = name[len(HUB_PREFIX):].strip("/")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts):
        raise ModelUnavailableError(f"{name!r} is not a hub name: write hf-hub:ORG/NAME (as hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K)")
    return repo


# -- what a folder holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class FolderLayout:
    """A usable model folder: its kind ("clip", "chinese_clip" or "open_clip") and files."""

    folder: Path
    kind: str
    config: Path
    weights: Path
    tokenizer: tuple[Path, ...] = ()
    preprocessor: Path | None = None
    extras: tuple[Path, ...] = field(default=())

    def files(self) -> list[Path]:
        """Every file the model's embeddings depend on."""
        listed = [self.config, self.weights, *self.tokenizer, *self.extras]
        if self.preprocessor is not None:
            listed.append(self.preprocessor)
        return sorted(set(listed))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{path} is not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ModelUnavailableError(f"{path} is not a JSON object")
    return data


def inspect_folder(folder: Path) -> FolderLayout:
    """The layout of a model folder, or a one-line error that says what is missing. Reads only
    its JSON files: no torch, no transformers."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelUnavailableError(f"model folder not found: {folder}")
    if (folder / OPEN_CLIP_CONFIG).is_file():
        cfg = _read_json(folder / OPEN_CLIP_CONFIG)
        if not isinstance(cfg.get("model_cfg"), dict):
            raise ModelUnavailableError(f"{folder / OPEN_CLIP_CONFIG} has no model_cfg section")
        weights = next((folder / n for n in OPEN_CLIP_WEIGHTS if (folder / n).is_file()), None)
        if weights is None:
            raise ModelUnavailableError(f"no weights file in open_clip model folder {folder} "
                                        f"(looked for {' or '.join(OPEN_CLIP_WEIGHTS[::2])})")
        return FolderLayout(folder, "open_clip", folder / OPEN_CLIP_CONFIG, weights,
                            extras=_text_tower_files(_local_text_dirs(folder, cfg["model_cfg"])))
    config = folder / "config.json"
    if not config.is_file():
        raise ModelUnavailableError(
            f"no config.json in model folder {folder} (a Hugging Face CLIP folder has config.json, "
            f"an open_clip one {OPEN_CLIP_CONFIG})")
    cfg = _read_json(config)
    architectures = cfg.get("architectures") or []
    arch = architectures[0] if isinstance(architectures, list) and architectures else None
    kind = KINDS.get(arch) if arch else _MODEL_TYPES.get(str(cfg.get("model_type")))
    if kind is None:
        shown = arch or cfg.get("model_type") or "none given"
        raise ModelUnavailableError(
            f"unknown architecture {shown!r} in {config} (cliptool reads {' and '.join(KINDS)} folders)")
    weights = next((folder / n for n in HF_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        sharded = any((folder / f"{n}.index.json").is_file() for n in HF_WEIGHTS)
        raise ModelUnavailableError(
            f"no weights file in model folder {folder} (looked for {' or '.join(HF_WEIGHTS)}"
            + ("; sharded weights are not supported: save with a larger max_shard_size)" if sharded else ")"))
    tokenizer = next((tuple(folder / n for n in names) for names in _TOKENIZER_SETS[kind]
                      if all((folder / n).is_file() for n in names)), None)
    if tokenizer is None:
        wanted = " and ".join(_TOKENIZER_SETS[kind][0])
        raise ModelUnavailableError(
            f"no tokenizer files in model folder {folder} (looked for {wanted}, or tokenizer.json)")
    extras = tuple(folder / n for n in _TOKENIZER_EXTRAS if (folder / n).is_file())
    pre = folder / PREPROCESSOR_CONFIG
    return FolderLayout(folder, kind, config, weights, tokenizer, pre if pre.is_file() else None, extras)


def _local_text_dirs(folder: Path, model_cfg: dict[str, Any]) -> dict[str, Path]:
    """The Hugging Face text tower's config and tokenizer names in an open_clip config that name
    local folders, as absolute paths (a relative name is taken relative to the model folder)."""
    text_cfg = model_cfg.get("text_cfg")
    found: dict[str, Path] = {}
    if not isinstance(text_cfg, dict):
        return found
    for key in ("hf_model_name", "hf_tokenizer_name"):
        value = text_cfg.get(key)
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            path = path if path.is_absolute() else folder / path
            if path.is_dir():
                found[key] = path.resolve()
    return found


def _text_tower_files(local: dict[str, Path]) -> tuple[Path, ...]:
    """The files of the local text-tower folders (`_local_text_dirs`): they define the vectors too."""
    names = ("config.json", *_TOKENIZER_EXTRAS, "vocab.json", "merges.txt", "vocab.txt",
             "sentencepiece.bpe.model", "spiece.model")
    return tuple(sorted({d / n for d in local.values() for n in names if (d / n).is_file()}))


def _name_absolutely(model_cfg: dict[str, Any], local: dict[str, Path]) -> bool:
    """Names the local text-tower folders in `model_cfg` by their absolute paths (open_clip would
    look for a relative one from the working directory); whether anything changed."""
    text_cfg = model_cfg.get("text_cfg") or {}
    if all(text_cfg.get(k) == str(v) for k, v in local.items()):
        return False
    text_cfg.update({k: str(v) for k, v in local.items()})
    return True


def config_text_tower(config: Path) -> tuple[dict[str, Any] | None, tuple[Path, ...]]:
    """For an open_clip model config file (`--model CONFIG.json`) whose Hugging Face text tower
    is a local folder: the config with that folder's name made absolute (None when it already
    is, or names no local folder) and the folder's files, which its vectors depend on."""
    try:
        model_cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, ()
    if not isinstance(model_cfg, dict):
        return None, ()
    local = _local_text_dirs(config.parent, model_cfg)
    return (model_cfg if _name_absolutely(model_cfg, local) else None), _text_tower_files(local)


def folder_identity(folder: Path) -> str:
    """A folder model's identity: a hash of the fingerprints of the files that define it, so a
    moved folder keeps it and a changed file changes it."""
    from cliptool.models.common import file_fingerprint

    layout = inspect_folder(folder)
    h = hashlib.sha256(layout.kind.encode())
    for path in layout.files():
        h.update(f"\0{path.name}\0{file_fingerprint(path)}".encode())
    return f"hf-folder:{h.hexdigest()[:16]}"


def source_identity(name: str) -> str:
    """The identity of a folder or hub model (see ModelSpec.identity)."""
    if is_hub_name(name):
        return HUB_PREFIX + hub_repo(name)
    return folder_identity(Path(name))


def quick_check(name: str) -> bool:
    """Checks a folder or hub name without importing torch; True when loading may go to the
    background (a local folder), False for a hub name (found in the cache, or downloaded, here
    in the foreground)."""
    if is_hub_name(name):
        hub_folder(name)
        return False
    inspect_folder(Path(name))
    return True


# -- hub repositories ------------------------------------------------------------------------

_HUB_ADVICE = ("on a machine with network run `hf download {repo}` (or huggingface_hub.snapshot_download), "
               "copy the folder here and pass --model /path/to/folder")


def hub_folder(name: str) -> Path:
    """The local folder of an `hf-hub:` repository: its snapshot in the Hugging Face cache when
    that holds a usable model (no network asked), else downloaded (its config and tokenizer
    files, then one weights file)."""
    from huggingface_hub import constants, snapshot_download

    repo = hub_repo(name)
    try:
        local = Path(snapshot_download(repo, local_files_only=True))
        inspect_folder(local)
        return local
    except ModelUnavailableError as exc:
        incomplete = f" (the cached copy is incomplete: {exc})"
    except Exception:  # noqa: BLE001 - not in the cache (LocalEntryNotFoundError and kin)
        incomplete = ""
    advice = _HUB_ADVICE.format(repo=repo)
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelUnavailableError(
            f"{name} is not in the local Hugging Face cache{incomplete} and HF_HUB_OFFLINE is set; {advice}")
    from cliptool.models.common import failure_line, hub_reachable

    if not hub_reachable("huggingface.co"):
        raise ModelUnavailableError(f"{name} is not in the local Hugging Face cache{incomplete} and "
                                    f"huggingface.co cannot be reached (no network?); {advice}")
    try:
        return _download_repo(repo)
    except ModelUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, HTTP and disk errors of many kinds
        raise ModelUnavailableError(failure_line(exc, f"cannot download {name}")) from None


def _download_repo(repo: str) -> Path:
    """Downloads a repository's small files, then the first weights file its layout uses."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    local = Path(snapshot_download(repo, allow_patterns=["*.json", "*.txt"]))
    candidates = OPEN_CLIP_WEIGHTS if (local / OPEN_CLIP_CONFIG).is_file() else HF_WEIGHTS
    for filename in candidates:
        try:
            hf_hub_download(repo, filename)
            break
        except EntryNotFoundError:
            continue
    inspect_folder(local)  # says what the repository lacks
    return local


# -- conversion to open_clip's layout ------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """An open_clip model config file (its stem is the registry name), the weights file that
    fits it and the image preprocessing the weights were trained with."""

    config: Path
    weights: Path
    preprocess: dict[str, Any]


def prepare(name: str) -> Prepared:
    """A folder or hub model made ready for open_clip: converted once into the user cache (a
    transformers folder), or its open_clip config registered as it is (an open_clip folder)."""
    folder = hub_folder(name) if is_hub_name(name) else Path(name).expanduser()
    layout = inspect_folder(folder)
    registry = registry_name(name)
    entry = cache_entry("hf-models", folder_identity(folder), CONVERSION_VERSION)
    if layout.kind == "open_clip":
        cfg = _read_json(layout.config)
        model_cfg = cfg["model_cfg"]
        _name_absolutely(model_cfg, _local_text_dirs(folder, model_cfg))  # relative to the folder
        return Prepared(_write_config(entry, registry, model_cfg), layout.weights,
                        dict(cfg.get("preprocess_cfg") or {}))
    if not (entry / _META_FILE).is_file():
        _convert(layout, entry)
    meta = _read_json(entry / _META_FILE)
    model_cfg = meta["model_cfg"]
    if layout.kind == "chinese_clip":  # the text tower's folder is this entry's
        text_dir = str(entry / _TEXT_DIR)
        model_cfg["text_cfg"].update(hf_model_name=text_dir, hf_tokenizer_name=text_dir)
    return Prepared(_write_config(entry, registry, model_cfg), entry / _WEIGHTS_FILE, meta["preprocess"])


def _write_config(entry: Path, registry: str, model_cfg: dict[str, Any]) -> Path:
    """The model config as a file named for open_clip's registry (rewritten when it differs)."""
    path = entry.parent / f"{entry.name}-configs" / f"{registry}.json"
    text = json.dumps(model_cfg, indent=1, sort_keys=True)
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _convert(layout: FolderLayout, entry: Path) -> None:
    """Writes the converted weights, config and (Chinese-CLIP) text folder into `entry`, built
    in a temporary folder beside it and renamed into place."""
    from safetensors.torch import save_file

    hf_cfg = _hf_config(layout)
    model_cfg = open_clip_config(hf_cfg, layout)
    state = convert_state_dict(_read_weights(layout.weights), hf_cfg, layout.kind)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / _WEIGHTS_FILE))
        if layout.kind == "chinese_clip":
            _write_text_folder(hf_cfg, layout, tmp / _TEXT_DIR)
        meta = {"version": CONVERSION_VERSION, "kind": layout.kind, "source": str(layout.folder),
                "model_cfg": model_cfg, "preprocess": image_preprocess(layout)}
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=1))
        publish_cache_entry(tmp, entry, _META_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _hf_config(layout: FolderLayout) -> Any:
    """The folder's config read by transformers (with its defaults filled in)."""
    try:
        import transformers
    except ImportError as exc:
        from cliptool.models.common import failure_line

        raise ModelUnavailableError(failure_line(exc, f"cannot read model folder {layout.folder}")) from None
    cls = transformers.CLIPConfig if layout.kind == "clip" else transformers.ChineseCLIPConfig
    try:
        return cls.from_dict(_read_json(layout.config))
    except Exception as exc:  # noqa: BLE001 - bad fields raise many kinds
        raise ModelUnavailableError(f"cannot read {layout.config}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


def _unsupported(layout: FolderLayout, what: str) -> ModelUnavailableError:
    return ModelUnavailableError(f"model folder {layout.folder} cannot be converted to open_clip: {what}")


def _tower_shape(tower: Any, layout: FolderLayout, label: str) -> dict[str, Any]:
    """Width, layers, heads and MLP ratio of a CLIP transformer tower config, checked."""
    width, heads, inner = int(tower.hidden_size), int(tower.num_attention_heads), int(tower.intermediate_size)
    if width % heads:
        raise _unsupported(layout, f"{label} hidden_size {width} is not a multiple of num_attention_heads {heads}")
    ratio = inner / width
    if int(width * ratio) != inner:
        raise _unsupported(layout, f"{label} intermediate_size {inner} is not expressible as a ratio of {width}")
    return {"width": width, "layers": int(tower.num_hidden_layers), "heads": heads, "mlp_ratio": ratio,
            "norm_kwargs": {"eps": float(tower.layer_norm_eps)}}


_ACTIVATIONS = {"quick_gelu": True, "gelu": False}  # HF hidden_act -> open_clip quick_gelu


def open_clip_config(hf_cfg: Any, layout: FolderLayout) -> dict[str, Any]:
    """The open_clip model config of a transformers CLIP or Chinese-CLIP config."""
    vc = hf_cfg.vision_config
    vision_act = vc.hidden_act
    if vision_act not in _ACTIVATIONS:
        raise _unsupported(layout, f"vision activation {vision_act!r} (open_clip has quick_gelu and gelu)")
    if vc.image_size % vc.patch_size:
        raise _unsupported(layout, f"image_size {vc.image_size} is not a multiple of patch_size {vc.patch_size}")
    vision = _tower_shape(vc, layout, "vision")
    vision_cfg = {"image_size": int(vc.image_size), "patch_size": int(vc.patch_size), "width": vision["width"],
                  "layers": vision["layers"], "head_width": vision["width"] // vision["heads"],
                  "mlp_ratio": vision["mlp_ratio"], "norm_kwargs": vision["norm_kwargs"]}
    cfg: dict[str, Any] = {"embed_dim": int(hf_cfg.projection_dim), "quick_gelu": _ACTIVATIONS[vision_act],
                           "vision_cfg": vision_cfg}
    tc = hf_cfg.text_config
    if layout.kind == "chinese_clip":
        cfg["text_cfg"] = {"hf_proj_type": "linear", "hf_pooler_type": "cls_last_hidden_state_pooler",
                           "hf_model_pretrained": False,
                           "context_length": min(CHINESE_CLIP_CONTEXT, int(tc.max_position_embeddings))}
        return cfg
    if tc.hidden_act != vision_act:
        raise _unsupported(layout, f"text activation {tc.hidden_act!r} differs from the vision tower's {vision_act!r}")
    text = _tower_shape(tc, layout, "text")
    text_cfg = {"context_length": int(tc.max_position_embeddings), "vocab_size": int(tc.vocab_size), **text}
    eos = tc.eos_token_id
    # transformers pools the text at the highest token id when eos_token_id is the legacy 2, else
    # at the first eos token; with CLIP's vocabulary (eos is the last id) both are open_clip's argmax
    if eos is not None and eos != 2 and eos != int(tc.vocab_size) - 1:
        text_cfg.update(pool_type="eos", eos_id=int(eos))
    cfg["text_cfg"] = text_cfg
    _check_clip_tokenizer(layout, int(tc.vocab_size))
    return cfg


def _clip_merges() -> list[str]:
    """open_clip's CLIP BPE merges, as its SimpleTokenizer reads them."""
    import gzip

    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return lines[1 : 49152 - 256 - 2 + 1]


def _check_clip_tokenizer(layout: FolderLayout, vocab_size: int) -> None:
    """open_clip tokenizes a converted CLIP with its own CLIP BPE: the folder's tokenizer must be
    that one (the openai and laion CLIP folders all carry it)."""
    names = [p.name for p in layout.tokenizer]
    try:
        if "merges.txt" in names:
            lines = (layout.folder / "merges.txt").read_text(encoding="utf-8").split("\n")
            merges = [m for m in lines if m and not m.startswith("#version")]
            vocab = json.loads((layout.folder / "vocab.json").read_text(encoding="utf-8"))
        else:
            model = json.loads((layout.folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
            vocab = model["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _unsupported(layout, f"its tokenizer files cannot be read ({type(exc).__name__}: {exc})") from None
    expected = _clip_merges()
    if merges != expected or len(vocab) != len(expected) + 512 + 2 or vocab_size != len(vocab):
        raise _unsupported(layout, f"its tokenizer ({', '.join(names)}) is not CLIP's standard BPE vocabulary, "
                                   "the only one open_clip's CLIP text tower reads")


def image_preprocess(layout: FolderLayout) -> dict[str, Any]:
    """Mean and std of preprocessor_config.json (OpenAI's when there is none)."""
    pre = _read_json(layout.preprocessor) if layout.preprocessor is not None else {}
    mean = pre.get("image_mean") or _OPENAI_MEAN
    std = pre.get("image_std") or _OPENAI_STD
    if len(mean) != 3 or len(std) != 3:
        raise ModelUnavailableError(f"{layout.preprocessor}: image_mean and image_std must have 3 values")
    return {"mean": [float(x) for x in mean], "std": [float(x) for x in std],
            "interpolation": "bicubic", "resize_mode": "shortest"}


def _read_weights(path: Path) -> dict[str, Any]:
    """A weights file's tensors (safetensors, or a torch pickle read with weights_only)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle, safetensors and EOF errors
        raise ModelUnavailableError(
            f"cannot load weights {path}: the file is damaged, truncated or not a model checkpoint "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
    if not isinstance(state, dict):
        raise ModelUnavailableError(f"weights file {path} does not hold a state dict")
    return state


def _vision_state(get: Any, layers: int) -> dict[str, Any]:
    """open_clip's VisionTransformer state from a transformers CLIP vision tower's."""
    out = {
        "visual.class_embedding": get("vision_model.embeddings.class_embedding"),
        "visual.positional_embedding": get("vision_model.embeddings.position_embedding.weight"),
        "visual.conv1.weight": get("vision_model.embeddings.patch_embedding.weight"),
        "visual.proj": get("visual_projection.weight").t(),
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for p in ("weight", "bias"):
            out[f"visual.{ours}.{p}"] = get(f"vision_model.{theirs}.{p}")
    out.update(_blocks(get, "vision_model.encoder.layers", "visual.transformer.resblocks", layers))
    return out


def _blocks(get: Any, src: str, dst: str, layers: int) -> dict[str, Any]:
    """open_clip residual attention blocks from transformers CLIP encoder layers."""
    import torch

    out: dict[str, Any] = {}
    for i in range(layers):
        s, d = f"{src}.{i}", f"{dst}.{i}"
        for p in ("weight", "bias"):
            out[f"{d}.attn.in_proj_{p}"] = torch.cat([get(f"{s}.self_attn.{x}_proj.{p}") for x in "qkv"])
            out[f"{d}.attn.out_proj.{p}"] = get(f"{s}.self_attn.out_proj.{p}")
            out[f"{d}.ln_1.{p}"] = get(f"{s}.layer_norm1.{p}")
            out[f"{d}.ln_2.{p}"] = get(f"{s}.layer_norm2.{p}")
            out[f"{d}.mlp.c_fc.{p}"] = get(f"{s}.mlp.fc1.{p}")
            out[f"{d}.mlp.c_proj.{p}"] = get(f"{s}.mlp.fc2.{p}")
    return out


def convert_state_dict(state: dict[str, Any], hf_cfg: Any, kind: str) -> dict[str, Any]:
    """open_clip's state dict (float32) from a transformers CLIPModel's or ChineseCLIPModel's."""
    import torch

    prefix = next((p for p in ("", "model.", "module.") if f"{p}visual_projection.weight" in state), "")

    def get(key: str) -> Any:
        try:
            return state[prefix + key].to(torch.float32)
        except KeyError:
            raise ModelUnavailableError(
                f"the weights lack {key!r}: not the weights of the {kind} model config.json describes") from None

    out = _vision_state(get, int(hf_cfg.vision_config.num_hidden_layers))
    out["logit_scale"] = get("logit_scale")
    if kind == "chinese_clip":
        skip = ("text_model.embeddings.position_ids", "text_model.pooler.")
        for key in state:
            if key.startswith(prefix + "text_model.") and not key[len(prefix):].startswith(skip):
                out["text.transformer." + key[len(prefix + "text_model."):]] = get(key[len(prefix):])
        out["text.proj.weight"] = get("text_projection.weight")
        return out
    out["token_embedding.weight"] = get("text_model.embeddings.token_embedding.weight")
    out["positional_embedding"] = get("text_model.embeddings.position_embedding.weight")
    out["ln_final.weight"] = get("text_model.final_layer_norm.weight")
    out["ln_final.bias"] = get("text_model.final_layer_norm.bias")
    out["text_projection"] = get("text_projection.weight").t()
    out.update(_blocks(get, "text_model.encoder.layers", "transformer.resblocks",
                       int(hf_cfg.text_config.num_hidden_layers)))
    return out


def _write_text_folder(hf_cfg: Any, layout: FolderLayout, out: Path) -> None:
    """Chinese-CLIP's text tower as a BERT folder open_clip's HFTextEncoder builds: a BertConfig
    with the tower's settings and the folder's tokenizer files."""
    from transformers import BertConfig

    fields = hf_cfg.text_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "_name_or_path"):
        fields.pop(key, None)
    bert = BertConfig(**fields)
    bert.architectures = ["BertModel"]
    out.mkdir(parents=True)
    bert.save_pretrained(str(out))
    for path in (*layout.tokenizer, *layout.extras):
        shutil.copyfile(path, out / path.name)
    tok_cfg = out / "tokenizer_config.json"
    settings = _read_json(tok_cfg) if tok_cfg.is_file() else {}
    # a class name of Chinese-CLIP's own (or none) would not be found by AutoTokenizer
    settings["tokenizer_class"] = "BertTokenizer"
    tok_cfg.write_text(json.dumps(settings, indent=1))
    if not (out / "tokenizer.json").is_file():  # for torch-free tokenizing with `tokenizers` alone
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(out)).save_pretrained(str(out))


def text_tower(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """A loaded model's text tower as a torch module that maps token ids (N, L) int64 to
    L2-normalised vectors (N, D) float32, and the tokenizer that makes those ids from texts
    (texts -> (N, L) tensor). For an exporter of generic text towers (ONNX): it covers
    open_clip's own text transformer and its Hugging Face towers alike (Chinese-CLIP's BERT)."""
    import torch

    class NormalisedText(torch.nn.Module):
        def __init__(self, clip: Any) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(self.clip.encode_text(ids).float(), dim=-1)

    return NormalisedText(model).eval(), tokenizer
