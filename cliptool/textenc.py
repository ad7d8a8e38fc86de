"""A torch-free CLIP text encoder for fast query embedding.

``cliptool search`` must answer in well under a second in a fresh process, but importing
``open_clip`` costs seconds and ``torch`` alone over one. This module runs the text tower of
a standard open_clip ``CLIP`` model with numpy only:

* :func:`export_text_encoder` (needs torch/open_clip, imported lazily) writes the text tower
  weights as ``.npy`` files, the BPE vocabulary and a ``textenc.json`` describing the format
  into a directory, atomically.
* :class:`NumpyTextEncoder` memory-maps that directory and encodes text into L2-normalised
  float32 vectors equal (to float rounding) to ``model.encode_text(tokenizer(texts),
  normalize=True)``.
* :class:`ClipBpeTokenizer` reproduces open_clip's ``SimpleTokenizer`` token ids.

Importing this module, loading an encoder and encoding never imports torch. ``ftfy`` is
imported only for text that is not plain printable ASCII (on which it is a no-op).

Because the text tower uses a causal attention mask, the output at the pooled (end-of-text)
position depends only on the tokens up to it, so the forward pass runs on that prefix only
instead of the full padded context (77 tokens): a short query costs a few token rows.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import string
import tempfile
import threading
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

__all__ = [
    "EXPORTER_VERSION",
    "FORMAT_VERSION",
    "META_FILE",
    "RUNTIMES",
    "SharedScope",
    "VOCAB_FILE",
    "ClipBpeTokenizer",
    "NumpyTextEncoder",
    "copy_export",
    "export_text_encoder",
    "is_text_encoder_dir",
]

FORMAT_NAME = "cliptool-textenc"
FORMAT_VERSION = 1
# Bump when export_text_encoder covers text towers it rejected before, so that rejections
# recorded by cliptool (embed.ClipModel.export_text_encoder) are tried again.
EXPORTER_VERSION = 1
META_FILE = "textenc.json"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# open_clip's SimpleTokenizer keeps the merges on lines 1 .. 49152-256-2 of the vocab file.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 256 * 2 + N_MERGES + 2  # byte tokens, byte+</w> tokens, merges, SOT, EOT

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
POOL_TYPES = ("argmax", "eos", "first", "last")
CLEAN_TYPES = ("lower", "whitespace", "canonicalize")
RUNTIMES = ("numpy", "onnxruntime")  # what runs an encoder's transformer layers

# Weight files: name -> shape template (L layers, D width, M mlp width, V vocab, C context, E out).
_LAYER_FILES = (
    ("ln_1_weight", ("L", "D")),
    ("ln_1_bias", ("L", "D")),
    ("attn_in_weight", ("L", "D", "3D")),
    ("attn_in_bias", ("L", "3D")),
    ("attn_out_weight", ("L", "D", "D")),
    ("attn_out_bias", ("L", "D")),
    ("ln_2_weight", ("L", "D")),
    ("ln_2_bias", ("L", "D")),
    ("mlp_fc_weight", ("L", "D", "M")),
    ("mlp_fc_bias", ("L", "M")),
    ("mlp_proj_weight", ("L", "M", "D")),
    ("mlp_proj_bias", ("L", "D")),
)
_OTHER_FILES = (
    ("token_embedding", ("V", "D")),
    ("positional_embedding", ("C", "D")),
    ("ln_final_weight", ("D",)),
    ("ln_final_bias", ("D",)),
)
# Matrices that are stored in the export dtype (float16 or float32); vectors stay float32.
_MATRICES = {
    "token_embedding",
    "attn_in_weight",
    "attn_out_weight",
    "mlp_fc_weight",
    "mlp_proj_weight",
    "text_projection",
}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _byte_symbols() -> list[str]:
    """The printable character standing for each byte value 0..255 in CLIP's byte-level BPE.

    Bytes that are printable Latin-1 characters stand for themselves; the others (controls,
    space, soft hyphen, ...) get code points from 256 upwards, in byte order.
    """
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols = []
    extra = 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _base_vocab_order(symbols: list[str]) -> list[str]:
    """The first 256 vocabulary entries: the kept (printable) bytes first, then the rest."""
    kept = [s for s in symbols if ord(s) < 256]
    moved = [s for s in symbols if ord(s) >= 256]
    return kept + moved


def _read_merges(path: Path) -> list[str]:
    """Merge lines ("a b") 1..N_MERGES of a gzipped CLIP BPE vocabulary.

    Decompresses only as much of the file as needed (the merges used are its first fifth).
    """
    need = N_MERGES + 1  # header line + merges
    with open(path, "rb") as fh:
        raw = fh.read()
    decomp = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip container
    chunks: list[bytes] = []
    newlines = 0
    pos = 0
    while newlines < need and pos < len(raw):
        chunk = decomp.decompress(raw[pos : pos + (1 << 16)])
        pos += 1 << 16
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
    if newlines < need:
        chunks.append(decomp.flush())
    lines = b"".join(chunks).decode("utf-8").split("\n", need + 1)
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES:
        raise ValueError(f"{path}: expected {N_MERGES} BPE merges, found {len(merges)}")
    return merges


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split())


_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


def _canonicalize(text: str) -> str:
    text = text.replace("_", " ").translate(_PUNCT_TABLE).lower()
    return " ".join(text.split())


def _is_plain_ascii(text: str) -> bool:
    """True when ftfy.fix_text and html.unescape provably leave `text` unchanged.

    ftfy only rewrites non-ASCII characters, control characters, carriage returns and HTML
    entities; printable ASCII (plus tab and newline) without '&' has none of these.
    """
    if not text.isascii() or "&" in text or "\r" in text:
        return False
    return text.isprintable() or text.replace("\t", " ").replace("\n", " ").isprintable()


class ClipBpeTokenizer:
    """Byte-level BPE tokenizer producing the same ids as open_clip's ``SimpleTokenizer``.

    ``encode`` gives the BPE ids of a text (no start/end tokens); ``tokenize`` adds the
    start/end tokens and truncates to the context length keeping the end token; ``__call__``
    returns the padded ``(N, context_length)`` int64 array open_clip's tokenizer returns.
    """

    def __init__(self, bpe_path: str | os.PathLike, context_length: int = 77, clean: str = "lower"):
        if clean not in CLEAN_TYPES:
            raise ValueError(f"unknown clean type {clean!r} (expected one of {CLEAN_TYPES})")
        import regex  # light (~25 ms); needed for \p{L} / \p{N} classes

        self.context_length = int(context_length)
        self.clean = clean
        symbols = _byte_symbols()
        self._byte_table = str.maketrans(dict(enumerate(symbols)))
        base = _base_vocab_order(symbols)
        # ids 0..511: the byte symbols, then the same with the end-of-word mark.
        self._base_ids = {sym: i for i, sym in enumerate(base + [b + "</w>" for b in base])}
        self._merges = _read_merges(Path(bpe_path))
        # Ranks keyed by the merge line itself ("first second"): no per-line parsing needed.
        # The symbol made by merge r has id 512 + r (the vocabulary lists merges in rank order;
        # export checks this against open_clip's encoder), so no token->id dict is needed.
        self._ranks = dict(zip(self._merges, range(len(self._merges))))
        self.vocab_size = len(self._base_ids) + len(self._merges) + 2
        self.sot_token_id = self.vocab_size - 2
        self.eot_token_id = self.vocab_size - 1
        self._cache: dict[str, tuple[int, ...]] = {
            SOT_TOKEN: (self.sot_token_id,),
            EOT_TOKEN: (self.eot_token_id,),
        }
        self._pattern = regex.compile(
            rf"{SOT_TOKEN}|{EOT_TOKEN}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )

    # -- text cleaning --------------------------------------------------------------------

    def clean_text(self, text: str) -> str:
        """open_clip's cleaning: ftfy fix, double HTML unescape, strip, then the clean type."""
        if not _is_plain_ascii(text):
            import ftfy  # ~50 ms import; skipped for plain ASCII, where it changes nothing

            text = ftfy.fix_text(text)
            text = html.unescape(html.unescape(text))
        text = text.strip()
        if self.clean == "lower":
            return _whitespace_clean(text).lower()
        if self.clean == "whitespace":
            return _whitespace_clean(text)
        return _canonicalize(text)

    # -- BPE ------------------------------------------------------------------------------

    @property
    def encoder(self) -> dict[str, int]:
        """The full symbol -> id vocabulary (built on demand; encoding does not need it)."""
        vocab = list(self._base_ids)
        vocab += [m.replace(" ", "") for m in self._merges] + [SOT_TOKEN, EOT_TOKEN]
        return dict(zip(vocab, range(len(vocab))))

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Token ids of one byte-encoded pre-token: apply the merges in rank order, each round
        merging every left-to-right occurrence of the lowest-ranked adjacent pair."""
        done = self._cache.get(piece)
        if done is not None:
            return done
        ranks = self._ranks
        base_ids = self._base_ids
        word = list(piece[:-1])
        word.append(piece[-1] + "</w>")
        ids = [base_ids[sym] for sym in word]
        while len(word) > 1:
            best_rank = -1
            for i in range(len(word) - 1):
                rank = ranks.get(word[i] + " " + word[i + 1])
                if rank is not None and (best_rank < 0 or rank < best_rank):
                    best_rank = rank
                    first, second = word[i], word[i + 1]
            if best_rank < 0:
                break
            joined = first + second
            new_id = len(base_ids) + best_rank
            out_word: list[str] = []
            out_ids: list[int] = []
            i = 0
            n = len(word)
            while i < n:
                if i + 1 < n and word[i] == first and word[i + 1] == second:
                    out_word.append(joined)
                    out_ids.append(new_id)
                    i += 2
                else:
                    out_word.append(word[i])
                    out_ids.append(ids[i])
                    i += 1
            word, ids = out_word, out_ids
        result = tuple(ids)
        if len(self._cache) < 100_000:
            self._cache[piece] = result
        return result

    def encode(self, text: str) -> list[int]:
        """BPE token ids of `text`, without start/end tokens and without truncation."""
        ids: list[int] = []
        table = self._byte_table
        for pre in self._pattern.findall(self.clean_text(text)):
            ids.extend(self._bpe(pre.encode("utf-8").decode("latin-1").translate(table)))
        return ids

    def tokenize(self, text: str, context_length: int | None = None) -> list[int]:
        """[SOT] + ids + [EOT], truncated to the context length with EOT kept last."""
        n = context_length or self.context_length
        ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
        if len(ids) > n:
            ids = ids[:n]
            ids[-1] = self.eot_token_id
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Zero-padded ``(N, context_length)`` int64 ids, like open_clip's tokenizer."""
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.tokenize(text, n)
            out[row, : len(ids)] = ids
        return out


# --------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * weight + bias


def _erfc_abs(z: np.ndarray) -> np.ndarray:
    """erfc(|z|) by a Chebyshev-fitted rational form, relative error below 1.2e-7."""
    z = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = 0.17087277
    for c in (-0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
              0.37409196, 1.00002368, -1.26551223):
        poly = c + t * poly
    return t * np.exp(poly - z * z)


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU: x * Phi(x), with Phi computed from erfc to stay accurate for x < 0."""
    tail = 0.5 * _erfc_abs(x * np.float32(0.7071067811865476))  # P(N > |x|)
    phi = np.where(x >= 0, 1.0 - tail, tail)
    return (x * phi).astype(np.float32, copy=False)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    inner = np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))


def _quick_gelu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(np.float32(-1.702) * x))


_ACT_FUNCS = {"gelu": _gelu, "gelu_tanh": _gelu_tanh, "quick_gelu": _quick_gelu}


# --------------------------------------------------------------------------------------------
# BLAS threads
# --------------------------------------------------------------------------------------------

# A query's matmuls are a handful of rows against large weight matrices: memory-bound, so many
# BLAS threads gain little, and on a busy machine OpenBLAS' thread hand-offs make them several
# times slower (measured: ~35 ms single-threaded vs 150-1000 ms with all threads on 2 busy
# cores); two threads read the weights at about 1.5x the bandwidth of one. The encoder limits
# BLAS threads (threadpoolctl) while it encodes and restores them afterwards. The setting is
# process-wide (OpenBLAS has no per-thread count), so other threads' BLAS calls made meanwhile
# get the same limit.


class SharedScope:
    """A process-wide setting changed while any thread is inside the scope, then restored.

    `apply(value)` changes the setting and returns what `restore(saved)` needs to put it back.
    The first thread to enter applies its value, later ones share it, and the last to leave
    restores: overlapping scopes in several threads never leave the setting changed (as a
    save/restore per thread does when their exits interleave).
    """

    def __init__(self, apply: Callable[[Any], Any], restore: Callable[[Any], None]) -> None:
        self._apply, self._restore = apply, restore
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: Any = None

    @contextmanager
    def __call__(self, value: Any) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._saved = self._apply(value)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    saved, self._saved = self._saved, None
                    self._restore(saved)


_blas_controller: Any = None


def numpy_blas(controller: Any) -> Any:
    """The part of a threadpoolctl controller that is numpy's own BLAS (the one the encoder's
    matrix products run in; OpenCV and FAISS bring BLAS libraries of their own), else every
    BLAS library it found."""
    marker = os.path.dirname(os.path.dirname(np.__file__)) + os.sep + "numpy"
    own = [lib for lib in controller.lib_controllers if lib.user_api == "blas" and lib.filepath.startswith(marker)]
    return controller.select(filepath=[lib.filepath for lib in own]) if own else controller.select(user_api="blas")


def _limit_blas(threads: int) -> Any:
    """Limits numpy's BLAS library to `threads`; returns the limiter."""
    global _blas_controller
    from threadpoolctl import ThreadpoolController

    if _blas_controller is None:  # finds numpy's library once (~0.5 ms); numpy loads it at import
        _blas_controller = numpy_blas(ThreadpoolController())
    return _blas_controller.limit(limits=threads)


blas_threads_limited = SharedScope(_limit_blas, lambda limiter: limiter.restore_original_limits())


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


def is_text_encoder_dir(path: str | os.PathLike) -> bool:
    """True if `path` holds an exported encoder of a format version this module reads."""
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta.get("format") == FORMAT_NAME and meta.get("version") == FORMAT_VERSION


def _expected_shapes(meta: dict) -> dict[str, tuple[int, ...]]:
    dims = {
        "L": meta["layers"],
        "D": meta["width"],
        "3D": 3 * meta["width"],
        "M": meta["mlp_width"],
        "V": meta["vocab_size"],
        "C": meta["context_length"],
        "E": meta["output_dim"],
    }
    shapes = {name: tuple(dims[d] for d in tmpl) for name, tmpl in _LAYER_FILES + _OTHER_FILES}
    if meta["has_text_projection"]:
        shapes["text_projection"] = (dims["D"], dims["E"])
        if meta["text_projection_bias"]:
            shapes["text_projection_bias"] = (dims["E"],)
    return shapes


class NumpyTextEncoder:
    """Encodes text with an exported CLIP text tower using numpy only (see module doc)."""

    def __init__(
        self, directory: Path, meta: dict, weights: dict[str, np.ndarray], blas_threads: int | None = 1
    ):
        self.directory = directory
        self.blas_threads = blas_threads
        self.meta = meta
        self.model_name: str = meta.get("model_name", "")
        self.context_length: int = meta["context_length"]
        self.width: int = meta["width"]
        self.heads: int = meta["heads"]
        self.layers: int = meta["layers"]
        self.output_dim: int = meta["output_dim"] if meta["has_text_projection"] else meta["width"]
        self.activation: str = meta["activation"]
        self.pool_type: str = meta["pool_type"]
        self.causal: bool = meta["causal"]
        self.eos_id: int | None = meta.get("eos_id")
        self.ln_eps: float = meta["ln_eps"]
        self._w = weights
        self._act = _ACT_FUNCS[self.activation]
        self._tokenizer: ClipBpeTokenizer | None = None
        self._f32_cache: dict[str, np.ndarray] = {}
        self._layers = None  # the transformer layers in ONNX Runtime, once enabled

    # -- loading --------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | os.PathLike, *, blas_threads: int | None = 1, runtime: str = "numpy",
             threads: int = 0) -> "NumpyTextEncoder":
        """Open an exported encoder. Weights are memory-mapped (read on first use only).

        `blas_threads`: BLAS threads used while encoding (restored afterwards); None leaves the
        setting alone. `runtime` runs the transformer layers in "numpy" (nothing to start: best
        for one query) or "onnxruntime" (about half the time per query after ~0.3 s packing
        the weights, with `threads` intra-op threads, 0: up to 2; see textenc_ort: best for a
        searcher that answers many queries). Raises if ONNX Runtime cannot be set up.
        """
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        directory = Path(directory)
        meta_path = directory / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no exported text encoder in {directory} (missing {META_FILE})") from None
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{meta_path}: unsupported text encoder format "
                f"{meta.get('format')!r} v{meta.get('version')!r} (this cliptool reads {FORMAT_NAME} v{FORMAT_VERSION})"
            )
        if meta["activation"] not in ACTIVATIONS or meta["pool_type"] not in POOL_TYPES:
            raise ValueError(f"{meta_path}: unsupported activation/pool type")
        weights: dict[str, np.ndarray] = {}
        for name, shape in _expected_shapes(meta).items():
            arr = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if arr.shape != shape:
                raise ValueError(f"{directory / name}.npy: shape {arr.shape}, expected {shape}")
            weights[name] = arr
        encoder = cls(directory, meta, weights, blas_threads)
        if runtime == "onnxruntime":
            encoder.use_onnx_runtime(threads)
        return encoder

    @property
    def tokenizer(self) -> ClipBpeTokenizer:
        """The BPE tokenizer (built on first use: ~50 ms)."""
        if self._tokenizer is None:
            tok = self.meta["tokenizer"]
            self._tokenizer = ClipBpeTokenizer(
                self.directory / tok["vocab_file"], self.context_length, clean=tok["clean"]
            )
        return self._tokenizer

    def _f32(self, name: str) -> np.ndarray:
        """A weight as float32: the memory map itself when stored float32, else converted
        once and kept (float16 exports trade ~2x disk for a one-off conversion)."""
        arr = self._w[name]
        if arr.dtype == np.float32:
            return arr
        conv = self._f32_cache.get(name)
        if conv is None:
            conv = self._f32_cache[name] = np.asarray(arr, dtype=np.float32)
        return conv

    @property
    def runtime(self) -> str:
        """What runs the transformer layers: "numpy" or "onnxruntime"."""
        return "numpy" if self._layers is None else "onnxruntime"

    def use_onnx_runtime(self, threads: int = 0) -> None:
        """Runs the transformer layers in ONNX Runtime from now on (what ``load(...,
        runtime="onnxruntime")`` does). Raises if it cannot be set up."""
        from .textenc_ort import LAYER_ARRAYS, OrtTextLayers

        self._layers = OrtTextLayers({name: self._f32(name) for name in LAYER_ARRAYS}, self.meta, threads)

    # -- encoding -------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(N, context_length)`` int64 token ids, identical to open_clip's tokenizer."""
        return self.tokenizer(texts)

    def encode(self, text: str) -> np.ndarray:
        """The L2-normalised float32 embedding (shape ``(output_dim,)``) of one text."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Iterable[str]) -> np.ndarray:
        """L2-normalised float32 embeddings, shape ``(N, output_dim)``."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of strings; use encode() for one")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.output_dim), dtype=np.float32)
        return self.encode_tokens(self.tokenize(texts))

    def pool_positions(self, ids: np.ndarray) -> np.ndarray:
        """Index of the token whose final state is pooled, per row (as open_clip picks it)."""
        n, ctx = ids.shape
        if self.pool_type == "argmax":
            return ids.argmax(axis=1)  # first maximum: the EOT token for CLIP's vocabulary
        if self.pool_type == "eos":
            return (ids == self.eos_id).argmax(axis=1)  # first EOS; 0 if none
        if self.pool_type == "first":
            return np.zeros(n, dtype=np.int64)
        return np.full(n, ctx - 1, dtype=np.int64)  # "last"

    def encode_tokens(self, ids: np.ndarray, *, truncate: bool = True) -> np.ndarray:
        """Embeddings of padded token ids ``(N, context_length)``, L2-normalised float32.

        With a causal mask only positions up to the pooled one can affect its output, so the
        forward pass runs on that prefix (``truncate=False`` runs the full context, to check).
        """
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] != self.context_length:
            raise ValueError(f"ids must have shape (N, {self.context_length}), got {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.meta["vocab_size"]):
            raise ValueError("token id out of range")
        pos = self.pool_positions(ids)
        seq = int(pos.max()) + 1 if (truncate and self.causal) else self.context_length
        with blas_threads_limited(self.blas_threads) if self.blas_threads else nullcontext():
            feats = self._head(self._forward(ids[:, :seq], pos))
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return (feats / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)

    def _forward(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Final hidden states (before ln_final) at positions `pos`, shape (N, width)."""
        w = self._w
        n, seq = ids.shape
        d, h = self.width, self.heads
        hd = d // h
        scale = np.float32(hd ** -0.5)
        eps = self.ln_eps
        emb = np.asarray(w["token_embedding"][ids.reshape(-1)], dtype=np.float32)
        x = emb.reshape(n * seq, d) + np.tile(np.asarray(w["positional_embedding"][:seq], np.float32), (n, 1))
        mask = None
        if self.causal and seq > 1:
            mask = np.triu(np.full((seq, seq), -np.inf, dtype=np.float32), 1)
        if self._layers is not None:
            full_mask = mask if mask is not None else np.zeros((seq, seq), dtype=np.float32)
            return self._layers(x.reshape(n, seq, d), full_mask)[np.arange(n), pos]
        attn_in_w, attn_out_w = self._f32("attn_in_weight"), self._f32("attn_out_weight")
        fc_w, proj_w = self._f32("mlp_fc_weight"), self._f32("mlp_proj_weight")
        for layer in range(self.layers):
            y = _layer_norm(x, w["ln_1_weight"][layer], w["ln_1_bias"][layer], eps)
            qkv = y @ attn_in_w[layer] + w["attn_in_bias"][layer]  # (n*seq, 3d)
            qkv = qkv.reshape(n, seq, 3, h, hd).transpose(2, 0, 3, 1, 4)  # (3, n, h, seq, hd)
            q, k, v = qkv[0] * scale, qkv[1], qkv[2]
            scores = q @ k.transpose(0, 1, 3, 2)  # (n, h, seq, seq)
            if mask is not None:
                scores += mask
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            att = (scores @ v).transpose(0, 2, 1, 3).reshape(n * seq, d)
            x = x + (att @ attn_out_w[layer] + w["attn_out_bias"][layer])
            y = _layer_norm(x, w["ln_2_weight"][layer], w["ln_2_bias"][layer], eps)
            y = self._act(y @ fc_w[layer] + w["mlp_fc_bias"][layer])
            x = x + (y @ proj_w[layer] + w["mlp_proj_bias"][layer])
        x = x.reshape(n, seq, d)
        return x[np.arange(n), pos]

    def _head(self, pooled: np.ndarray) -> np.ndarray:
        w = self._w
        y = _layer_norm(pooled, w["ln_final_weight"], w["ln_final_bias"], self.ln_eps)
        if self.meta["has_text_projection"]:
            y = y @ self._f32("text_projection")
            if self.meta["text_projection_bias"]:
                y = y + w["text_projection_bias"]
        return np.asarray(y, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Export (torch / open_clip, imported lazily)
# --------------------------------------------------------------------------------------------


def _unsupported(msg: str) -> NotImplementedError:
    return NotImplementedError(f"numpy text encoder: {msg}")


def _text_tower_parts(model: Any) -> dict:
    """The pieces of a standard open_clip text tower, or NotImplementedError."""
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import TextTransformer

    if isinstance(model, CLIP):
        if type(model).encode_text is not CLIP.encode_text:
            raise _unsupported(f"{type(model).__name__} overrides encode_text")
        parts = {
            "token_embedding": model.token_embedding,
            "positional_embedding": model.positional_embedding,
            "transformer": model.transformer,
            "ln_final": model.ln_final,
            "text_projection": model.text_projection,
            "attn_mask": model.attn_mask,
            "pool_type": model.text_pool_type,
            "eos_id": getattr(model, "text_eos_id", None),
            "cls_emb": None,
            "use_pad_mask": False,
        }
    elif isinstance(model, CustomTextCLIP):
        if type(model).encode_text is not CustomTextCLIP.encode_text:
            raise _unsupported(f"{type(model).__name__} overrides encode_text")
        text = model.text
        if type(text) is not TextTransformer or type(text).forward is not TextTransformer.forward:
            raise _unsupported(f"text tower {type(text).__name__} is not open_clip's TextTransformer")
        if getattr(text, "output_tokens", False):
            raise _unsupported("text tower returns tokens (output_tokens=True)")
        parts = {
            "token_embedding": text.token_embedding,
            "positional_embedding": text.positional_embedding,
            "transformer": text.transformer,
            "ln_final": text.ln_final,
            "text_projection": text.text_projection,
            "attn_mask": text.attn_mask,
            "pool_type": text.pool_type,
            "eos_id": getattr(text, "eos_id", None),
            "cls_emb": text.cls_emb,
            "use_pad_mask": bool(getattr(text, "use_pad_mask", False)),
        }
    else:
        raise _unsupported(f"model type {type(model).__name__} is not an open_clip CLIP/CustomTextCLIP")
    if parts["cls_emb"] is not None:
        raise _unsupported("text tower with an appended CLS embedding (CoCa-style)")
    if parts["use_pad_mask"]:
        raise _unsupported("text tower with a padding mask")
    if parts["pool_type"] not in POOL_TYPES:
        raise _unsupported(f"text pool type {parts['pool_type']!r}")
    return parts


def _layer_norm_params(norm: Any, width: int) -> tuple[np.ndarray, np.ndarray, float]:
    import torch

    if not isinstance(norm, torch.nn.LayerNorm) or type(norm).forward not in _ln_forwards():
        raise _unsupported(f"norm layer {type(norm).__name__}")
    if tuple(norm.normalized_shape) != (width,):
        raise _unsupported(f"layer norm over {tuple(norm.normalized_shape)}")
    ones = np.ones(width, np.float32)
    zeros = np.zeros(width, np.float32)
    weight = _np(norm.weight) if norm.weight is not None else ones
    bias = _np(norm.bias) if getattr(norm, "bias", None) is not None else zeros
    return weight, bias, float(norm.eps)


def _ln_forwards() -> set:
    import torch
    from open_clip.transformer import LayerNorm, LayerNormFp32

    return {torch.nn.LayerNorm.forward, LayerNorm.forward, LayerNormFp32.forward}


def _np(t: Any) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().astype(np.float32, copy=True)


def _activation_name(act: Any) -> str:
    import torch
    from open_clip.transformer import QuickGELU

    if type(act) is QuickGELU:
        return "quick_gelu"
    if type(act) is torch.nn.GELU:
        if act.approximate == "none":
            return "gelu"
        if act.approximate == "tanh":
            return "gelu_tanh"
    raise _unsupported(f"activation {act!r}")


def _layer_scale(ls: Any, width: int) -> np.ndarray | None:
    import torch
    from open_clip.transformer import LayerScale

    if isinstance(ls, torch.nn.Identity):
        return None
    if type(ls) is LayerScale:
        gamma = _np(ls.gamma)
        if gamma.shape != (width,):
            raise _unsupported(f"layer scale of shape {gamma.shape}")
        return gamma
    raise _unsupported(f"layer scale {type(ls).__name__}")


def _block_arrays(block: Any, width: int) -> tuple[dict[str, np.ndarray], str, float]:
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    if type(block) is not ResidualAttentionBlock:
        raise _unsupported(f"transformer block {type(block).__name__}")
    if hasattr(block, "ln_1_kv"):
        raise _unsupported("cross-attention block")
    attn = block.attn
    if type(attn) is not torch.nn.MultiheadAttention or not attn._qkv_same_embed_dim:
        raise _unsupported(f"attention {type(attn).__name__}")
    if attn.bias_k is not None or attn.add_zero_attn or attn.embed_dim != width:
        raise _unsupported("attention with extra key/value bias or zero attention")
    mlp = block.mlp
    names = [n for n, _ in mlp.named_children()]
    if names != ["c_fc", "gelu", "c_proj"]:
        raise _unsupported(f"MLP layout {names}")
    for lin in (mlp.c_fc, mlp.c_proj, attn.out_proj):
        if not isinstance(lin, torch.nn.Linear):
            raise _unsupported(f"linear layer {type(lin).__name__}")
    act = _activation_name(mlp.gelu)
    ln1_w, ln1_b, eps1 = _layer_norm_params(block.ln_1, width)
    ln2_w, ln2_b, eps2 = _layer_norm_params(block.ln_2, width)
    if eps1 != eps2:
        raise _unsupported("layer norms with different eps")

    def bias(lin_bias: Any, n: int) -> np.ndarray:
        return _np(lin_bias) if lin_bias is not None else np.zeros(n, np.float32)

    mlp_width = mlp.c_fc.out_features
    out_w = _np(attn.out_proj.weight).T
    out_b = bias(attn.out_proj.bias, width)
    proj_w = _np(mlp.c_proj.weight).T
    proj_b = bias(mlp.c_proj.bias, width)
    # Layer scale: x + g * (a @ W + b) == x + a @ (W * g) + b * g.
    g1 = _layer_scale(block.ls_1, width)
    if g1 is not None:
        out_w, out_b = out_w * g1, out_b * g1
    g2 = _layer_scale(block.ls_2, width)
    if g2 is not None:
        proj_w, proj_b = proj_w * g2, proj_b * g2
    arrays = {
        "ln_1_weight": ln1_w,
        "ln_1_bias": ln1_b,
        "attn_in_weight": _np(attn.in_proj_weight).T,
        "attn_in_bias": bias(attn.in_proj_bias, 3 * width),
        "attn_out_weight": out_w,
        "attn_out_bias": out_b,
        "ln_2_weight": ln2_w,
        "ln_2_bias": ln2_b,
        "mlp_fc_weight": _np(mlp.c_fc.weight).T,
        "mlp_fc_bias": bias(mlp.c_fc.bias, mlp_width),
        "mlp_proj_weight": proj_w,
        "mlp_proj_bias": proj_b,
    }
    return arrays, act, eps1


def _causal_flag(attn_mask: Any, ctx: int) -> bool:
    import torch

    if attn_mask is None:
        return False
    expected = torch.full((ctx, ctx), float("-inf")).triu_(1)
    mask = attn_mask.detach().to("cpu").float()
    if tuple(mask.shape) != (ctx, ctx) or not torch.equal(mask, expected):
        raise _unsupported("attention mask is neither causal nor absent")
    return True


def _tokenizer_spec(model_name: str, tokenizer: Any, context_length: int) -> tuple[str, Any]:
    """The clean type of a standard CLIP BPE tokenizer (and the tokenizer), else raise."""
    import open_clip
    from open_clip import tokenizer as oc_tok

    if tokenizer is None:
        try:
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as exc:  # HF tokenizers that cannot be fetched, unknown names, ...
            raise _unsupported(f"cannot build open_clip's tokenizer for {model_name!r}: {exc}") from exc
    if type(tokenizer) is not oc_tok.SimpleTokenizer:
        raise _unsupported(f"tokenizer {type(tokenizer).__name__} is not CLIP's SimpleTokenizer")
    if getattr(tokenizer, "reduction_fn", None) is not None:
        raise _unsupported("tokenizer with a reduction mask")
    clean_types = {
        getattr(oc_tok, "_clean_lower", None): "lower",
        getattr(oc_tok, "_clean_whitespace", None): "whitespace",
        getattr(oc_tok, "_clean_canonicalize", None): "canonicalize",
    }
    clean = clean_types.get(tokenizer.clean_fn)
    if clean is None:
        raise _unsupported(f"tokenizer clean function {tokenizer.clean_fn!r}")
    if len(tokenizer.encoder) != VOCAB_SIZE:
        raise _unsupported(f"tokenizer vocabulary of {len(tokenizer.encoder)} tokens (expected {VOCAB_SIZE})")
    if tokenizer.context_length != context_length:
        raise _unsupported(
            f"tokenizer context length {tokenizer.context_length} != model context length {context_length}"
        )
    return clean, tokenizer


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def export_text_encoder(
    model,
    model_name: str,
    out_dir: str | os.PathLike,
    *,
    tokenizer=None,
    dtype: str = "float32",
) -> None:
    """Write `model`'s text tower and tokenizer into `out_dir` for :class:`NumpyTextEncoder`.

    `model` is a loaded open_clip ``CLIP`` (or ``CustomTextCLIP`` with a plain
    ``TextTransformer``) with open_clip's ``SimpleTokenizer``; `tokenizer` defaults to
    ``open_clip.get_tokenizer(model_name)``. Weights are written as ``.npy`` files in `dtype`
    ("float32", or "float16": half the disk, ~1e-3 less accurate cosines, converted on load).
    The directory is assembled under a temporary name beside `out_dir` and renamed into place
    (replacing an older export), so readers never see a half-written encoder.

    Raises NotImplementedError (one-line message) for text towers or tokenizers this format
    does not cover (HF text towers, SigLIP tokenizers, CoCa, custom attention blocks, ...).
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', not {dtype!r}")
    arrays, shape = _tower_arrays(model)
    clean, oc_tokenizer = _tokenizer_spec(model_name, tokenizer, shape["context_length"])
    for name in list(arrays):
        arrays[name] = arrays[name].astype(dtype if name in _MATRICES else np.float32)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_name": model_name,
        "dtype": dtype,
        **shape,
        "tokenizer": {
            "type": "clip_bpe",
            "vocab_file": VOCAB_FILE,
            "clean": clean,
            "sot_id": int(oc_tokenizer.sot_token_id),
            "eot_id": int(oc_tokenizer.eot_token_id),
        },
        "files": {f"{name}.npy": {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
    }
    expected = _expected_shapes(meta)
    if set(expected) != set(arrays) or any(tuple(arrays[k].shape) != s for k, s in expected.items()):
        raise AssertionError("internal error: exported shapes do not match the format")
    _write_export(Path(out_dir), arrays, meta, oc_tokenizer)


def _tower_arrays(model: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The text tower's weights (float32, by file name) and its shape and settings for the
    meta file, or NotImplementedError for a tower the format does not cover."""
    import torch

    parts = _text_tower_parts(model)
    blocks = list(parts["transformer"].resblocks)
    if not blocks:
        raise _unsupported("text transformer without blocks")
    token_embedding = parts["token_embedding"]
    if type(token_embedding) is not torch.nn.Embedding:
        raise _unsupported(f"token embedding {type(token_embedding).__name__}")
    tok_emb = _np(token_embedding.weight)
    pos_emb = _np(parts["positional_embedding"])
    vocab_size, width = tok_emb.shape
    context_length = pos_emb.shape[0]
    if pos_emb.shape[1] != width or vocab_size < VOCAB_SIZE:
        raise _unsupported(f"embedding shapes {tok_emb.shape} / {pos_emb.shape}")
    causal = _causal_flag(parts["attn_mask"], context_length)
    pool_type, eos_id = parts["pool_type"], parts["eos_id"]
    if pool_type == "eos" and eos_id is None:
        raise _unsupported("eos pooling without an eos id")
    arrays, act, eps = _stacked_blocks(blocks, width)
    lnf_w, lnf_b, eps_f = _layer_norm_params(parts["ln_final"], width)
    if eps_f != eps:
        raise _unsupported("blocks with different activations or layer norm eps")
    proj_w, proj_b = _projection(parts["text_projection"], width)
    arrays.update(token_embedding=tok_emb, positional_embedding=pos_emb, ln_final_weight=lnf_w,
                  ln_final_bias=lnf_b)
    if proj_w is not None:
        arrays["text_projection"] = proj_w
        if proj_b is not None:
            arrays["text_projection_bias"] = proj_b
    shape = {
        "context_length": int(context_length),
        "vocab_size": int(vocab_size),
        "width": int(width),
        "heads": int(blocks[0].attn.num_heads),
        "layers": len(blocks),
        "mlp_width": int(arrays["mlp_fc_weight"].shape[2]),
        "output_dim": int(proj_w.shape[1]) if proj_w is not None else int(width),
        "has_text_projection": proj_w is not None,
        "text_projection_bias": proj_b is not None,
        "activation": act,
        "ln_eps": float(eps),
        "pool_type": pool_type,
        "eos_id": int(eos_id) if eos_id is not None else None,
        "causal": causal,
    }
    return arrays, shape


def _stacked_blocks(blocks: list[Any], width: int) -> tuple[dict[str, np.ndarray], str, float]:
    """The per-layer arrays of all blocks stacked over layers, their activation and eps."""
    heads = blocks[0].attn.num_heads
    per_layer: dict[str, list[np.ndarray]] = {name: [] for name, _ in _LAYER_FILES}
    acts, epss = set(), set()
    for block in blocks:
        if block.attn.num_heads != heads:
            raise _unsupported("blocks with different head counts")
        arrays, act, eps = _block_arrays(block, width)
        acts.add(act)
        epss.add(eps)
        for name, arr in arrays.items():
            per_layer[name].append(arr)
    if len(acts) != 1 or len(epss) != 1:
        raise _unsupported("blocks with different activations or layer norm eps")
    if len({a.shape for a in per_layer["mlp_fc_weight"]}) != 1:
        raise _unsupported("blocks with different MLP widths")
    return {name: np.stack(v) for name, v in per_layer.items()}, acts.pop(), epss.pop()


def _projection(proj: Any, width: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The text projection as an (in, out) matrix and bias (None, None: no projection)."""
    import torch

    if proj is None:
        return None, None
    if isinstance(proj, torch.nn.Linear):
        return _np(proj.weight).T, (_np(proj.bias) if proj.bias is not None else None)
    if isinstance(proj, torch.Tensor) and proj.ndim == 2 and proj.shape[0] == width:
        return _np(proj), None
    raise _unsupported(f"text projection {type(proj).__name__}")


def _write_export(out_dir: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], oc_tokenizer: Any) -> None:
    """Writes the vocabulary, arrays and meta file beside `out_dir` and renames them into place."""
    from open_clip import tokenizer as oc_tok

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        shutil.copyfile(oc_tok.default_bpe(), tmp / VOCAB_FILE)
        # The vocabulary must give exactly open_clip's ids (e.g. not a custom bpe_path).
        check = ClipBpeTokenizer(tmp / VOCAB_FILE, meta["context_length"], clean=meta["tokenizer"]["clean"])
        vocab = check.encoder  # must be duplicate-free: ids are derived from merge ranks
        if len(vocab) != check.vocab_size or vocab != oc_tokenizer.encoder:
            raise _unsupported("tokenizer vocabulary differs from open_clip's default BPE vocabulary")
        for name, arr in arrays.items():
            _save_npy(tmp / f"{name}.npy", arr)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_export(src: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Copy an export (hard links where the file system allows) to `out_dir`, renamed into place."""
    src, out_dir = Path(src), Path(out_dir)

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.rmdir(tmp)
        shutil.copytree(src, tmp, copy_function=link_or_copy)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename directory `src` to `dst`, replacing an existing `dst`."""
    if not dst.exists() and not dst.is_symlink():
        os.rename(src, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.rmdir(old)
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)  # put the previous export back
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
