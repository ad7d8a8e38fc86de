"""Loading a CLIP model and its tokenizer with open_clip: pretrained tags, checkpoint files,
config files, model folders and hub repositories, with one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cliptool.config import cache_entry
from cliptool.errors import ModelUnavailableError
from cliptool.models.common import error_detail, failure_line, hub_reachable, is_out_of_memory
from cliptool.models.spec import ModelSpec, is_model_source
from cliptool.models.text import SharedScope

_NOISY_LOGGERS = ("open_clip", "huggingface_hub", "timm", "")  # "": the root logger, which open_clip logs to


def _silence_loggers(level: int) -> tuple[dict[str, int], Any]:
    """Raises the noisy loggers to `level`; returns their levels and a handler added to the
    root logger (so that open_clip's logging.warning calls do not install one of their own)."""
    import logging

    saved = {name: logging.getLogger(name or None).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name or None).setLevel(level)
    root = logging.getLogger()
    handler = None
    if not root.handlers:
        handler = logging.NullHandler()
        root.addHandler(handler)
    return saved, handler


def _restore_loggers(state: tuple[dict[str, int], Any]) -> None:
    import logging

    saved, handler = state
    for name, level in saved.items():
        logging.getLogger(name or None).setLevel(level)
    if handler is not None:
        logging.getLogger().removeHandler(handler)


_quiet_loggers = SharedScope(_silence_loggers, _restore_loggers)


# -- loading a model with open_clip ----------------------------------------------------------


def _with_absolute_text_tower(cfg: Path) -> Path:
    """The config file to register: `cfg` itself, or, when it names its local Hugging Face text
    tower relative to itself, a copy in the user cache naming it absolutely (open_clip would
    look for it relative to the working directory)."""
    from cliptool.models.hf import config_text_tower

    resolved, _ = config_text_tower(cfg)
    if resolved is None:
        return cfg
    text = json.dumps(resolved, indent=1, sort_keys=True)
    path = cache_entry("model-configs", text, 1) / cfg.name  # open_clip names the model by the file's stem
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def _validate_config(cfg: Path) -> None:
    """A model config JSON must exist and parse."""
    if not cfg.is_file():
        raise ModelUnavailableError(f"model config not found: {cfg}")
    try:
        json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"model config {cfg} is not valid JSON ({exc})") from None


def quick_check(spec: ModelSpec) -> bool:
    """Checks a spec without importing open_clip; True when loading may go to the background
    (a local checkpoint file and a model open_clip is sure to know, or a model folder)."""
    if is_model_source(spec.name):
        from cliptool.models.hf import quick_check

        return quick_check(spec.name)
    cfg = spec.config_path
    if cfg is not None:
        _validate_config(cfg)
    ckpt = spec.checkpoint_path
    if ckpt is None:
        return False  # a pretrained tag: check and download in the foreground
    if not ckpt.is_file():
        raise ModelUnavailableError(f"checkpoint file not found: {ckpt}")
    if cfg is not None:
        return True
    import importlib.util

    try:
        found = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):  # a broken install: the load says what is missing
        return False
    locations = list(found.submodule_search_locations or []) if found else []
    return any((Path(loc) / "model_configs" / f"{spec.model_name}.json").is_file() for loc in locations)


def preprocess_cfg(model: Any) -> dict[str, Any]:
    from open_clip import get_model_preprocess_cfg

    return dict(get_model_preprocess_cfg(model))


def load_open_clip(spec: ModelSpec, visual_bf16: bool = False) -> tuple[Any, Any]:
    """Builds the model and its tokenizer.

    Every failure becomes a ModelUnavailableError whose one line names its cause: an unknown
    model or tag, a config open_clip cannot build, weights that are not cached and cannot be
    downloaded, a damaged checkpoint or one of another model, a missing package, memory.
    Process-wide settings (log levels) are changed only while it runs.
    """
    import logging

    name = spec.model_name
    try:
        with _quiet_loggers(logging.CRITICAL):
            import open_clip

            if is_model_source(spec.name):  # a folder or hub model, converted once to open_clip's layout
                from cliptool.models.hf import prepare

                prepared = prepare(spec.name)
                open_clip.add_model_config(prepared.config)
                weights, preprocess = prepared.weights, prepared.preprocess
            else:
                _register_model(spec, open_clip)
                weights, preprocess = _weights_file(spec, open_clip)
            model = _build_with_weights(spec, weights, preprocess, visual_bf16)
            model.eval()
            try:
                tokenizer = open_clip.get_tokenizer(name)
            except Exception as exc:  # noqa: BLE001 - HF tokenizers download, and fail many ways
                raise ModelUnavailableError(failure_line(exc, f"cannot build the tokenizer of {name}")) from None
        return model, tokenizer
    except ModelUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - an import, memory or library failure outside the steps above
        raise ModelUnavailableError(failure_line(exc, f"cannot load model {name}")) from None


def _register_model(spec: ModelSpec, open_clip: Any) -> None:
    """Makes a config file's model known to open_clip; an unknown model name is an error."""
    cfg = spec.config_path
    if cfg is not None:
        _validate_config(cfg)
        open_clip.add_model_config(_with_absolute_text_tower(cfg))
    if spec.model_name not in open_clip.list_models():
        raise ModelUnavailableError(
            f"unknown model {spec.model_name!r}; see open_clip.list_models() or pass a config JSON")


def _weights_file(spec: ModelSpec, open_clip: Any) -> tuple[Path, dict[str, Any]]:
    """The local file of the spec's weights (downloaded first if a tag's weights are not in
    the cache) and the preprocessing the weights were trained with (a tag's, else none)."""
    ckpt = spec.checkpoint_path
    if ckpt is not None:
        if not ckpt.is_file():
            raise ModelUnavailableError(f"checkpoint file not found: {ckpt}")
        return ckpt, {}
    if spec.pretrained.startswith("hf-hub:"):  # open_clip weights in a hub repository, as a tag's
        hub = spec.pretrained[len("hf-hub:"):].strip("/")
        pcfg = {"url": "", "hf_hub": hub if hub.count("/") >= 2 else hub + "/"}
        return Path(_cached_weights(pcfg) or _download_weights(pcfg, spec.pretrained, open_clip)), {}
    name = spec.model_name
    tags = open_clip.list_pretrained_tags_by_model(name)
    if spec.pretrained not in tags:
        known = ", ".join(tags) or "none"
        raise ModelUnavailableError(
            f"no pretrained weights {spec.pretrained!r} for {name} (known tags: {known}; "
            "or pass a checkpoint file with --pretrained)"
        )
    pcfg = dict(open_clip.get_pretrained_cfg(name, spec.pretrained))
    label = f"{name}/{spec.pretrained}"
    path = _cached_weights(pcfg) or _download_weights(pcfg, label, open_clip)
    return Path(path), {k: v for k, v in pcfg.items() if k != "size"}  # as open_clip applies a tag's


_GET_FILE_ADVICE = "download them elsewhere and pass the file: --pretrained /path/to/open_clip_pytorch_model.bin"


def _hub_files(pcfg: dict[str, Any]) -> tuple[str, list[str]]:
    """The HF hub repository of a tag and its file names in the order open_clip tries them
    (a .safetensors alternative first, when safetensors is installed)."""
    import importlib.util

    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, filename = os.path.split(pcfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    names = [filename]
    if importlib.util.find_spec("safetensors") is not None:
        if filename == HF_WEIGHTS_NAME:
            names.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def _uses_hub(pcfg: dict[str, Any]) -> bool:
    from open_clip.pretrained import has_hf_hub

    return bool(pcfg.get("hf_hub")) and has_hf_hub()


def _cached_weights(pcfg: dict[str, Any]) -> str | None:
    """A tag's weights file when it is already on disk (no network), else None."""
    if pcfg.get("file"):
        return pcfg["file"] if os.path.isfile(pcfg["file"]) else None
    if _uses_hub(pcfg):
        from huggingface_hub import try_to_load_from_cache

        repo, names = _hub_files(pcfg)
        for filename in names:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    url = pcfg.get("url", "")
    if url and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))):
        from open_clip.pretrained import download_pretrained_from_url

        return download_pretrained_from_url(url)  # checks the file's checksum; downloads only if it is wrong
    return None


def _download_weights(pcfg: dict[str, Any], label: str, open_clip: Any) -> str:
    """Downloads a tag's weights; says in one line why that is not possible."""
    from urllib.parse import urlparse

    hub = _uses_hub(pcfg)
    if not hub and not pcfg.get("url"):
        raise ModelUnavailableError(f"pretrained weights {label} have no download source; {_GET_FILE_ADVICE}")
    if hub:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise ModelUnavailableError(
                f"pretrained weights {label} are not in the local cache and HF_HUB_OFFLINE is set; {_GET_FILE_ADVICE}")
    host = "huggingface.co" if hub else (urlparse(pcfg["url"]).hostname or "")
    if not hub_reachable(host):
        raise ModelUnavailableError(
            f"pretrained weights {label} are not in the local cache and {host} cannot be reached (no network?); "
            + _GET_FILE_ADVICE)
    try:
        path = open_clip.download_pretrained(pcfg)
    except Exception as exc:  # noqa: BLE001 - hub, HTTP and disk errors of many kinds
        raise ModelUnavailableError(failure_line(exc, f"cannot download pretrained weights {label}")) from None
    if not path or not os.path.isfile(path):
        raise ModelUnavailableError(f"cannot download pretrained weights {label}; {_GET_FILE_ADVICE}")
    return path


def _build_with_weights(spec: ModelSpec, weights: Path, preprocess: dict[str, Any], visual_bf16: bool) -> Any:
    """The model with the weights of a local file, each failure said for what it is."""
    name = spec.model_name
    skeleton = _meta_skeleton(name, preprocess)
    model = _build(spec, preprocess) if skeleton is None else None  # the config's own errors first
    state = _read_state(weights)
    if skeleton is not None:
        model = _assign_plain(skeleton, state, visual_bf16) if state is not None else None
        if model is not None:
            return model
        del skeleton
        model = _build(spec, preprocess)
    del state  # open_clip's loader reads the file again; no second copy meanwhile
    import open_clip

    try:
        open_clip.load_checkpoint(model, str(weights), strict=True)
    except Exception as exc:  # noqa: BLE001 - key, shape and conversion errors of many kinds
        if isinstance(exc, ImportError) or is_out_of_memory(exc):
            raise ModelUnavailableError(failure_line(exc, f"cannot load {weights} into {name}")) from None
        raise ModelUnavailableError(
            f"checkpoint {weights} does not fit model {name} (weights of another model?): "
            f"{type(exc).__name__}: {error_detail(exc)}") from None
    return model


def _meta_skeleton(name: str, preprocess: dict[str, Any]) -> Any | None:
    """The model built on the "meta" device (no memory, no random init), or None when the
    architecture cannot be built so (a real build then says what is wrong)."""
    import open_clip
    import torch

    try:
        with torch.device("meta"):
            return open_clip.create_model(name, pretrained=None, device="meta", pretrained_text=False,
                                          force_preprocess_cfg=preprocess)
    except Exception as exc:  # noqa: BLE001 - a bad config, or init code that needs real tensors
        if isinstance(exc, ImportError) or is_out_of_memory(exc):
            raise
        return None


def _build(spec: ModelSpec, preprocess: dict[str, Any]) -> Any:
    """The model with random weights; a config open_clip cannot build is said to be that."""
    import open_clip

    try:
        return open_clip.create_model(spec.model_name, pretrained=None, pretrained_text=False,
                                      force_preprocess_cfg=preprocess)
    except Exception as exc:  # noqa: BLE001 - bad fields raise TypeError, ValueError, KeyError, ...
        if isinstance(exc, ImportError) or is_out_of_memory(exc):
            raise ModelUnavailableError(failure_line(exc, f"cannot build model {spec.model_name}")) from None
        source = f"config {spec.config_path}" if spec.config_path else "open_clip's built-in config"
        raise ModelUnavailableError(
            f"model {spec.model_name} cannot be built from its {source}: {type(exc).__name__}: {error_detail(exc)}"
        ) from None


def _read_state(weights: Path) -> dict[str, Any] | None:
    """The state dict in a weights file (unwrapped as open_clip does), or None for formats
    left to open_clip's loader (.npz/.npy); a file that cannot be read is said to be damaged."""
    from open_clip.factory import load_state_dict

    if weights.suffix in (".npz", ".npy"):
        return None
    try:
        state = load_state_dict(str(weights))
    except Exception as exc:  # noqa: BLE001 - zip, pickle, safetensors and EOF errors
        if isinstance(exc, ImportError) or is_out_of_memory(exc):
            raise ModelUnavailableError(failure_line(exc, f"cannot read checkpoint {weights}")) from None
        raise ModelUnavailableError(
            f"cannot load checkpoint {weights}: the file is damaged, truncated or not a model checkpoint "
            f"({type(exc).__name__}: {error_detail(exc, 160)})") from None
    return state if isinstance(state, dict) else None


def _assign_plain(skeleton: Any, state: dict[str, Any], visual_bf16: bool = False) -> Any | None:
    """The skeleton with `state`'s tensors as its parameters, without a throwaway copy.

    open_clip builds the model with random weights, then copies the loaded checkpoint in: two
    copies of every weight at the peak (about 1.2 GB for ViT-B-32) and seconds spent drawing
    random numbers. Here the loaded tensors become the meta-built model's parameters. Returns
    None whenever `state` is anything but exactly the model's keys and shapes (open_clip's
    loader handles those: prefixed keys, resized position embeddings, other layouts...).
    """
    import torch

    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    expected = skeleton.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        return None
    for k, ref in expected.items():  # one tensor at a time: no second copy of the model
        dtype = torch.bfloat16 if visual_bf16 and k.startswith("visual.") and ref.is_floating_point() else ref.dtype
        state[k] = state[k].to(dtype)
    skeleton.load_state_dict(state, strict=True, assign=True)
    for module in skeleton.modules():  # buffers not saved in checkpoints (the causal text mask)
        for bname, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if bname != "attn_mask" or buf.dim() != 2 or buf.shape[0] != buf.shape[1]:
                return None
            mask = torch.empty(buf.shape, dtype=buf.dtype).fill_(float("-inf")).triu_(1)
            module.register_buffer(bname, mask, persistent=False)
    if any(t.is_meta for t in list(skeleton.parameters()) + list(skeleton.buffers())):
        return None
    return skeleton


def _load_plain_checkpoint(name: str, ckpt: Path, visual_bf16: bool = False) -> Any | None:
    """The fast path alone: the model with a checkpoint that is exactly its state dict, or
    None (see _assign_plain)."""
    skeleton = _meta_skeleton(name, {})
    if skeleton is None:
        return None
    try:
        state = _read_state(Path(ckpt))
    except ModelUnavailableError:
        return None
    return _assign_plain(skeleton, state, visual_bf16) if state is not None else None
