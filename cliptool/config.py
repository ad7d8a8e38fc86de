"""Defaults and where the index lives."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

INDEX_DIR_ENV = "CLIPTOOL_INDEX_DIR"
CACHE_DIR_ENV = "CLIPTOOL_CACHE_DIR"
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "datacomp_xl_s13b_b90k"
# Short names for --model: name -> (open_clip model, its default pretrained tag).
MODEL_SHORT_NAMES = {
    "multilingual": ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"),  # XLM-RoBERTa text tower: ~100 languages
}


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_index_dir() -> Path:
    """$CLIPTOOL_INDEX_DIR, else the platform's user data directory."""
    env = os.environ.get(INDEX_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("cliptool", appauthor=False)) / "index"


def default_cache_dir() -> Path:
    """$CLIPTOOL_CACHE_DIR, else the platform's user cache directory (derived models)."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cliptool", appauthor=False))


def cache_entry(kind: str, identity: str, version: int) -> Path:
    """The cache folder for something derived from a model (`kind`), keyed by its identity."""
    import hashlib

    key = hashlib.sha256(f"{version}\0{identity}".encode()).hexdigest()[:24]
    return default_cache_dir() / kind / key


def publish_cache_entry(tmp: Path, entry: Path, marker: str) -> None:
    """Renames a cache entry written aside in `tmp` into place at `entry`. A damaged entry (one
    without its `marker` file) is replaced; when another process published the entry first, its
    entry is kept."""
    import os
    import shutil

    if entry.exists():
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry
    try:
        os.replace(tmp, entry)
    except OSError:
        if not (entry / marker).is_file():  # another process won the race: use its entry
            raise


@dataclass(frozen=True)
class IndexOptions:
    """How videos are cut into scenes and sampled."""

    detector: str = "content"
    threshold: float | None = None  # detector's own default when None
    min_scene_frames: int = 15
    max_scene_seconds: float = 10.0  # long shots are split into windows of at most this length
    samples_per_scene: int = 3
    batch_size: int = 32
    detect_width: int = 256  # width of the small frames the detector sees
    # Samples that follow the content (see sample.ChangeSampler): besides the scene's
    # `samples_per_scene`, a frame is sampled when the picture has changed enough since the last
    # such sample, no sooner than `change_min_gap` seconds after it, and on average no more often
    # than one every `change_mean_gap` seconds (bursts of `change_burst`). 0 turns it off.
    change_threshold: float = 0.02  # fraction of the picture's cells that changed visibly
    change_min_gap: float = 0.3
    change_mean_gap: float = 5.0
    change_burst: int = 4
    # What the image tower sees of each sample (models.views): "squeeze", the whole frame, by default
    views: str = "squeeze"
    # Words (analysis.words): which sources each video's words come from ("subtitles", "speech",
    # "screen", comma-separated; "" for none), and how speech is recognised. They change only a
    # video's words, never its scenes or vectors, so they are kept apart (`words_settings`).
    words: str = "subtitles"
    speech_engine: str = "pocketsphinx"
    speech_model: str | None = None
    language: str | None = None

    def settings(self) -> dict[str, Any]:
        """What changes the scenes and vectors an analysis gives (not how fast it runs)."""
        return {k: v for k, v in asdict(self).items() if k not in _RUN_ONLY and k not in WORD_SETTINGS}

    def words_settings(self) -> dict[str, Any]:
        """What changes the words of a video (see analysis.words.extract.words_key)."""
        return {k: getattr(self, k) for k in WORD_SETTINGS}

    def settings_key(self) -> str:
        """The settings as a video's record keeps them."""
        return json.dumps(self.settings(), sort_keys=True, separators=(",", ":"))

    def changed(self, given: dict[str, Any]) -> IndexOptions:
        """These options with the settings in `given` (None values: unchanged). Another detector
        without a threshold of its own takes its default one."""
        chosen = {k: v for k, v in given.items() if v is not None}
        if chosen.get("detector", self.detector) != self.detector and "threshold" not in chosen:
            chosen["threshold"] = None
        return replace(self, **chosen)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> IndexOptions:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in known})


_RUN_ONLY = ("batch_size",)
WORD_SETTINGS = ("words", "speech_engine", "speech_model", "language")
# the command line's spelling of a setting, where it has one
SETTING_OPTIONS = {"detector": "--detector", "threshold": "--threshold", "max_scene_seconds": "--max-scene",
                   "samples_per_scene": "--samples", "views": "--views"}


def settings_difference(old_key: str, new: IndexOptions) -> str:
    """How a video's recorded settings differ from `new`'s, as options: "--max-scene 20 (now 5)"."""
    try:
        old = json.loads(old_key)
    except ValueError:
        return "settings unknown"
    now = new.settings()
    parts = []
    for name, value in now.items():
        if name in old and old[name] != value:
            spelled = SETTING_OPTIONS.get(name, name)
            parts.append(f"{spelled} {_shown(old[name])} (now {_shown(value)})")
    return ", ".join(parts) or "other settings"


def _shown(value: Any) -> str:
    if value is None:
        return "default"
    return f"{value:g}" if isinstance(value, float) else str(value)