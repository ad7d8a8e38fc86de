"""The text towers as ONNX Runtime models, with torch-free tokenizers, for fast query embedding.

``cliptool search`` must answer in well under a second in a fresh process, but importing
``open_clip`` costs seconds and ``torch`` alone over one. Every text tower is therefore exported
once, with torch, to ONNX, and run at search time in ONNX Runtime:

* :func:`export_text_encoder` (needs torch/open_clip, imported lazily) exports
  ``model.encode_text`` (normalised, dynamic batch) with ``torch.onnx.export``, saves the model
  as ONNX Runtime optimised it (so a search does not optimise it again), saves the tokenizer,
  checks the exported encoder against open_clip on a few texts (token ids exactly, vectors
  within 1e-5) and writes a ``textenc.json`` describing it, all into a directory, atomically.
* :class:`OnnxTextEncoder` loads that directory and encodes text into L2-normalised float32
  vectors equal (to float rounding) to ``model.encode_text(tokenizer(texts), normalize=True)``.
* :func:`add_int8_variant` adds an opt-in int8 tower beside the exact one (ONNX Runtime's
  dynamic quantisation): it reads a quarter of the weights per query, at a cosine of about
  0.9997 to the exact vectors (``OnnxTextEncoder.load(..., precision="int8")``).
* :class:`ClipBpeTokenizer` reproduces open_clip's ``SimpleTokenizer`` token ids (CLIP
  towers); :class:`HfTextTokenizer` runs a Hugging Face tower's ``tokenizer.json`` with the
  ``tokenizers`` library, as open_clip's ``HFTokenizer`` does through transformers.

Importing this module, loading an encoder and encoding never imports torch or transformers.
``ftfy`` is imported only for text that is not plain printable ASCII (on which it is a no-op).

A causal CLIP text tower pools the state of one token (the end of text), which depends only on
the tokens up to it, so such a tower is exported to run on that prefix (the sequence length is
dynamic) instead of the full padded context of 77 tokens: a short query costs a few token rows.
A Hugging Face tower masks its padding, so it runs on the unpadded tokens.
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import string
import tempfile
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

__all__ = [
    "EXPORTER_VERSION",
    "FORMAT_VERSION",
    "META_FILE",
    "SharedScope",
    "TEXT_PRECISIONS",
    "VOCAB_FILE",
    "ClipBpeTokenizer",
    "HfTextTokenizer",
    "OnnxTextEncoder",
    "add_int8_variant",
    "check_precision",
    "copy_export",
    "export_meta",
    "export_text_encoder",
    "int8_unavailable",
    "is_text_encoder_dir",
]

FORMAT_NAME = "cliptool-textenc-onnx"
FORMAT_VERSION = 1
# Bump when export_text_encoder covers text towers it rejected before, so that rejections
# recorded by cliptool (embed.ClipModel.export_text_encoder) are tried again.
# 1: the numpy encoder (standard CLIP transformers only); 2: ONNX export of any tower.
EXPORTER_VERSION = 2
META_FILE = "textenc.json"
MODEL_FILE = "text.onnx"
WEIGHTS_FILE = "text.onnx.data"
INT8_MODEL_FILE = "text-int8.onnx"
INT8_WEIGHTS_FILE = "text-int8.onnx.data"
TEXT_PRECISIONS = ("fp32", "int8")
# The int8 tower's vectors against the exact tower's, on CHECK_TEXTS, at export: the least cosine
# it must reach to be kept.
INT8_MIN_COSINE = 0.99
INT8_NOT_TRIED = "the export is older than int8 towers: an index run adds one"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
HF_TOKENIZER_FILE = "tokenizer.json"

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# open_clip's SimpleTokenizer keeps the merges on lines 1 .. 49152-256-2 of the vocab file.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 256 * 2 + N_MERGES + 2  # byte tokens, byte+</w> tokens, merges, SOT, EOT

CLEAN_TYPES = ("lower", "whitespace", "canonicalize")
PREFIX_POOLS = ("argmax", "eos", "first")  # pools of a causal tower that may run on the prefix
# Texts the export is checked on: plain, cased, punctuated, entities, accents, Chinese,
# emoji, long (truncated), empty.
CHECK_TEXTS = [
    "a dog in a park", "A Photo Of A CAT on the SOFA", "Hello, World!!! (really) #tag $5.99",
    "fish &amp; chips", "café naïve Straße", "公园里的狗", "日本語 한국어 😀🐶", "",
    "a very long caption " + "with many repeated words " * 20,
]
ATOL = 1e-5  # the exported encoder's vectors against open_clip's, at export

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
        return _clean(text, self.clean)

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
# Hugging Face tokenizers (for HF text towers)
# --------------------------------------------------------------------------------------------


def _clean(text: str, clean: str) -> str:
    """open_clip's clean functions (basic_clean, then lower / whitespace / canonicalize)."""
    if not _is_plain_ascii(text):
        import ftfy

        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    text = text.strip()
    if clean == "lower":
        return _whitespace_clean(text).lower()
    if clean == "whitespace":
        return _whitespace_clean(text)
    return _canonicalize(text)


class HfTextTokenizer:
    """A Hugging Face tower's tokenizer (``tokenizer.json``) run by ``tokenizers``, giving the
    ids open_clip's ``HFTokenizer`` gives, without its padding (the towers mask padding)."""

    def __init__(self, path: str | os.PathLike, context_length: int, clean: str = "whitespace",
                 pad_id: int = 0, sep_id: int | None = None) -> None:
        from tokenizers import Tokenizer

        if clean not in CLEAN_TYPES:
            raise ValueError(f"unknown clean type {clean!r} (expected one of {CLEAN_TYPES})")
        self.context_length = int(context_length)
        self.clean = clean
        self.pad_id = int(pad_id)
        self.sep_id = sep_id  # strip_sep_token: the separator becomes 0, as open_clip does
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.context_length)

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(N, longest)`` int64 ids, rows padded with the pad id."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [e.ids for e in self._tokenizer.encode_batch([_clean(t, self.clean) for t in texts])]
        out = np.full((len(rows), max((len(r) for r in rows), default=0)), self.pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        if self.sep_id is not None:
            out[out == self.sep_id] = 0
        return out


# --------------------------------------------------------------------------------------------
# Process-wide settings
# --------------------------------------------------------------------------------------------


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



# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


def export_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The meta file of the export in `path` as a dict; None where it is missing or unreadable."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_text_encoder_dir(path: str | os.PathLike) -> bool:
    """True if `path` holds an exported encoder of a format version this module reads."""
    meta = export_meta(path) or {}
    return meta.get("format") == FORMAT_NAME and meta.get("version") == FORMAT_VERSION


def _session(model: Path, threads: int, optimised_to: Path | None = None, prepack: bool = True,
             weights_file: str = WEIGHTS_FILE) -> Any:
    """An ONNX Runtime CPU session on `model`. With `optimised_to`, the graph is optimised and
    saved there (weights beside it in `weights_file`); else it is run as saved, unoptimised again.
    `prepack`: ONNX Runtime packs the matrices once for its kernels (~0.3 s of CPU for ViT-B-32's
    text tower), after which a query takes about a third of the CPU it takes unpacked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    if optimised_to is not None:
        # Extended, not all: the saved graph keeps to portable operators (no layout-specific ones).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimised_to)
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", weights_file)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def check_precision(precision: str) -> str:
    """`precision` if it is one of TEXT_PRECISIONS, else ValueError."""
    if precision not in TEXT_PRECISIONS:
        raise ValueError(f"text precision must be one of {', '.join(TEXT_PRECISIONS)}, not {precision!r}")
    return precision


def int8_unavailable(entry: dict[str, Any] | None) -> str | None:
    """Why an export's int8 entry (its meta's "int8") gives no int8 tower; None when it gives one."""
    entry = entry or {}
    return None if entry.get("file") else entry.get("unavailable", INT8_NOT_TRIED)


class OnnxTextEncoder:
    """Encodes text with an exported text tower in ONNX Runtime (see the module doc)."""

    def __init__(self, directory: Path, meta: dict, threads: int = 0, prepack: bool = True,
                 precision: str = "fp32") -> None:
        from cliptool.config import usable_cores

        self.directory = directory
        self.meta = meta
        self.model_name: str = meta.get("model_name", "")
        self.kind: str = meta["tokenizer"]["type"]
        self.context_length: int = int(meta["context_length"])
        self.output_dim: int = int(meta["output_dim"])
        self.pool_type: str = meta.get("pool_type", "")
        self.prefix: bool = bool(meta.get("prefix"))
        self.eos_id: int | None = meta.get("eos_id")
        self.runtime = "onnxruntime"
        self.prepacked = prepack
        self.precision = precision
        model_file = MODEL_FILE if precision == "fp32" else meta["int8"]["file"]
        # Two threads read the weights at about 1.5x the bandwidth of one; more gain nothing
        # on a query's few token rows.
        self._session = _session(directory / model_file, threads or min(usable_cores(), 2), prepack=prepack)
        self._tokenizer: ClipBpeTokenizer | HfTextTokenizer | None = None

    @classmethod
    def load(cls, directory: str | os.PathLike, *, threads: int = 0, prepack: bool = True,
             precision: str = "fp32") -> "OnnxTextEncoder":
        """Opens an exported encoder; raises FileNotFoundError or ValueError for a missing or
        foreign one. `threads`: ONNX Runtime's intra-op threads (0: up to 2). `prepack` (see
        _session): True for an encoder that answers many queries; False starts faster, for one.
        `precision`: "fp32" (the exact tower) or "int8" (its variant; ValueError where it has none)."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no exported text encoder in {directory} (missing {META_FILE})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ValueError(f"{meta_path}: unsupported text encoder format {found!r} "
                             f"(this cliptool reads {FORMAT_NAME} v{FORMAT_VERSION})")
        if meta.get("tokenizer", {}).get("type") not in ("clip_bpe", "hf"):
            raise ValueError(f"{meta_path}: unknown tokenizer type")
        check_precision(precision)
        if precision == "int8" and (why := int8_unavailable(meta.get("int8"))):
            raise ValueError(f"no int8 text tower in {directory} ({why})")
        return cls(directory, meta, threads, prepack, precision)

    @property
    def tokenizer(self) -> ClipBpeTokenizer | HfTextTokenizer:
        """The tower's tokenizer (built on first use)."""
        if self._tokenizer is None:
            tok = self.meta["tokenizer"]
            if self.kind == "clip_bpe":
                self._tokenizer = ClipBpeTokenizer(self.directory / tok["file"], self.context_length, tok["clean"])
            else:
                self._tokenizer = HfTextTokenizer(self.directory / tok["file"], self.context_length, tok["clean"],
                                                  tok["pad_id"], tok.get("strip_sep_id"))
        return self._tokenizer

    def tokenize(self, texts: str | Sequence[str]) -> np.ndarray:
        """The token ids the tower is run on: CLIP's padded ``(N, context_length)``, an HF
        tower's padded to the longest text."""
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

    def encode_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Embeddings of token ids as :meth:`tokenize` gives them, L2-normalised float32."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.prefix:  # only the tokens up to the pooled one matter
            ids = np.ascontiguousarray(ids[:, : int(self._pool_positions(ids).max()) + 1])
        out = self._session.run(None, {"ids": ids})[0]
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # normalised in the graph; again for safety
        return (out / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)

    def _pool_positions(self, ids: np.ndarray) -> np.ndarray:
        """Index of the token whose final state is pooled, per row (as open_clip picks it)."""
        if self.pool_type == "argmax":
            return ids.argmax(axis=1)  # first maximum: the EOT token for CLIP's vocabulary
        if self.pool_type == "eos":
            return (ids == self.eos_id).argmax(axis=1)  # first EOS; 0 if none
        return np.zeros(len(ids), dtype=np.int64)  # "first"


# --------------------------------------------------------------------------------------------
# Export (torch / open_clip, imported lazily)
# --------------------------------------------------------------------------------------------


def _unsupported(msg: str) -> NotImplementedError:
    return NotImplementedError(f"text export: {msg}")


def _clip_tower_parts(model: Any) -> dict[str, Any] | None:
    """The pieces of a causal open_clip text transformer that may run on the prefix up to the
    pooled token, or None when the tower must run on the full context (it is then exported as
    ``encode_text`` itself)."""
    import torch
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import TextTransformer

    if type(model).encode_text is CLIP.encode_text:
        tower, pool, eos = model, model.text_pool_type, getattr(model, "text_eos_id", None)
        cls_emb, pad_mask = None, False
    elif isinstance(model, CustomTextCLIP) and type(model).encode_text is CustomTextCLIP.encode_text \
            and type(model.text).forward is TextTransformer.forward and not getattr(model.text, "output_tokens", False):
        tower, pool, eos = model.text, model.text.pool_type, getattr(model.text, "eos_id", None)
        cls_emb, pad_mask = tower.cls_emb, bool(getattr(tower, "use_pad_mask", False))
    else:
        return None
    mask = tower.attn_mask
    if cls_emb is not None or pad_mask or pool not in PREFIX_POOLS or (pool == "eos" and eos is None) \
            or mask is None or mask.dim() != 2:
        return None
    ctx = mask.shape[0]
    if not torch.equal(mask.detach().float().cpu(), torch.full((ctx, ctx), float("-inf")).triu_(1)):
        return None
    return {"token_embedding": tower.token_embedding, "positional_embedding": tower.positional_embedding,
            "transformer": tower.transformer, "ln_final": tower.ln_final, "text_projection": tower.text_projection,
            "attn_mask": mask, "pool_type": pool, "eos_id": eos}


def _prefix_module(parts: dict[str, Any]) -> Any:
    """``encode_text`` (normalised) of a causal CLIP text tower on the first S tokens, S = the
    ids' length: the tower's own modules, with the positional embedding and the causal mask
    taken for those S positions."""
    import torch
    from open_clip.transformer import text_global_pool

    class PrefixTextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token_embedding = parts["token_embedding"]
            self.transformer = parts["transformer"]
            self.ln_final = parts["ln_final"]
            self.text_projection = parts["text_projection"]
            self.register_buffer("positional_embedding", parts["positional_embedding"].detach(), persistent=False)
            self.register_buffer("attn_mask", parts["attn_mask"].detach(), persistent=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            # Positions as tensor ops (not a slice by a Python int, which the tracer would fix
            # to the example's length): 0..S-1 of each row.
            positions = torch.ones_like(ids).cumsum(1) - 1
            first = positions[0]
            cast = self.transformer.get_cast_dtype()
            x = self.token_embedding(ids).to(cast) + self.positional_embedding[positions].to(cast)
            mask = self.attn_mask.index_select(0, first).index_select(1, first)
            x = self.transformer(x, attn_mask=mask)
            x = text_global_pool(self.ln_final(x), ids, parts["pool_type"], eos_token_id=parts["eos_id"])
            proj = self.text_projection
            if proj is not None:
                x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
            return torch.nn.functional.normalize(x, dim=-1)

    return PrefixTextTower().eval()


@contextmanager
def _traceable_attention(module: Any) -> Iterator[None]:
    """Swaps each torch ``nn.MultiheadAttention`` (self-attention, batch first) inside `module`
    for the same computation written so that the tracer keeps the sequence length dynamic (its
    own code has the tracer fix the length of the example), for as long as the export runs."""
    import torch
    import torch.nn.functional as F

    class TraceableAttention(torch.nn.Module):
        def __init__(self, mha: torch.nn.MultiheadAttention) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_weights: bool = False,
                    attn_mask: torch.Tensor | None = None, **_: Any) -> tuple[torch.Tensor, None]:
            if k is not q or v is not q:
                raise NotImplementedError("attention with other keys or values than its queries")
            mha = self.mha
            heads = mha.num_heads
            qkv = F.linear(q, mha.in_proj_weight, mha.in_proj_bias).unflatten(-1, (3, heads, mha.head_dim))
            q_, k_, v_ = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, L, head_dim)
            if attn_mask is not None and attn_mask.dtype != q_.dtype and attn_mask.dtype != torch.bool:
                attn_mask = attn_mask.to(q_.dtype)
            out = F.scaled_dot_product_attention(q_, k_, v_, attn_mask=attn_mask)
            return mha.out_proj(out.transpose(1, 2).flatten(2)), None

    swapped: list[tuple[Any, str, Any]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.MultiheadAttention and child.batch_first and child._qkv_same_embed_dim \
                    and child.bias_k is None and not child.add_zero_attn and child.dropout == 0.0:
                swapped.append((parent, name, child))
                setattr(parent, name, TraceableAttention(child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _full_module(model: Any) -> Any:
    """``model.encode_text(ids, normalize=True)`` as a module."""
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.model.encode_text(ids, normalize=True)

    return TextTower().eval()


def _tokenizer_spec(model_name: str, tokenizer: Any, context_length: int | None) -> tuple[dict[str, Any], Any]:
    """How to tokenize torch-free as `tokenizer` (open_clip's) does, and the tokenizer, else raise."""
    import open_clip
    from open_clip import tokenizer as oc_tok

    if tokenizer is None:
        try:
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as exc:  # HF tokenizers that cannot be fetched, unknown names, ...
            raise _unsupported(f"cannot build open_clip's tokenizer for {model_name!r}: {exc}") from exc
    clean_types = {
        getattr(oc_tok, "_clean_lower", None): "lower",
        getattr(oc_tok, "_clean_whitespace", None): "whitespace",
        getattr(oc_tok, "_clean_canonicalize", None): "canonicalize",
    }
    clean = clean_types.get(getattr(tokenizer, "clean_fn", None))
    if type(tokenizer) is oc_tok.SimpleTokenizer:
        if getattr(tokenizer, "reduction_fn", None) is not None:
            raise _unsupported("tokenizer with a reduction mask")
        if clean is None:
            raise _unsupported(f"tokenizer clean function {tokenizer.clean_fn!r}")
        if len(tokenizer.encoder) != VOCAB_SIZE:
            raise _unsupported(f"tokenizer vocabulary of {len(tokenizer.encoder)} tokens (expected {VOCAB_SIZE})")
        if context_length is not None and tokenizer.context_length != context_length:
            raise _unsupported(
                f"tokenizer context length {tokenizer.context_length} != model context length {context_length}")
        return {"type": "clip_bpe", "file": VOCAB_FILE, "clean": clean}, tokenizer
    if type(tokenizer) is oc_tok.HFTokenizer:
        if clean is None:
            raise _unsupported(f"tokenizer clean function {tokenizer.clean_fn!r}")
        if getattr(tokenizer, "tokenizer_mode", "") not in ("", None):
            raise _unsupported(f"tokenizer mode {tokenizer.tokenizer_mode!r}")
        hf = tokenizer.tokenizer
        if not getattr(hf, "is_fast", False):
            raise _unsupported(f"tokenizer {type(hf).__name__} has no tokenizer.json (not a fast tokenizer)")
        if hf.pad_token_id is None:
            raise _unsupported("tokenizer without a padding token")
        sep = hf.sep_token_id if tokenizer.strip_sep_token else None
        return {"type": "hf", "file": HF_TOKENIZER_FILE, "clean": clean, "pad_id": int(hf.pad_token_id),
                "strip_sep_id": None if sep is None else int(sep)}, tokenizer
    raise _unsupported(f"tokenizer {type(tokenizer).__name__} (neither CLIP's SimpleTokenizer nor an HFTokenizer)")


def export_text_encoder(model: Any, model_name: str, out_dir: str | os.PathLike, *, tokenizer: Any = None) -> None:
    """Exports `model`'s text tower and tokenizer into `out_dir` for :class:`OnnxTextEncoder`.

    `model` is a loaded open_clip model; `tokenizer` defaults to
    ``open_clip.get_tokenizer(model_name)``. A causal CLIP text transformer runs on the prefix
    up to its pooled token; other towers (Hugging Face transformers included) are exported as
    ``encode_text``. Before it is put in place, the export is checked against open_clip on
    CHECK_TEXTS. The directory is assembled under a temporary name beside `out_dir` and renamed
    into place (replacing an older export), so readers never see a half-written encoder.

    Raises NotImplementedError (one-line message) for a tokenizer that has no torch-free
    equivalent here, a tower that torch cannot export, or an export that does not match.
    """
    parts = _clip_tower_parts(model)
    context = int(parts["attn_mask"].shape[0]) if parts else None
    tok_meta, oc_tokenizer = _tokenizer_spec(model_name, tokenizer, context)
    if tok_meta["type"] == "hf" and getattr(getattr(model, "text", None), "config", None) is None:
        raise _unsupported("a Hugging Face tokenizer on a text tower that is not a Hugging Face model")
    context = int(oc_tokenizer.context_length)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _save_tokenizer(tmp, tok_meta, oc_tokenizer, context)
        # A causal CLIP tower on its prefix first; should that fail or differ, on the full context.
        for prefix in ([True, False] if parts else [False]):
            try:
                _export_onnx(tmp, model, parts if prefix else None, tok_meta, context, model_name)
                _check_export(tmp, model, oc_tokenizer)
                break
            except NotImplementedError:
                if not prefix:
                    raise
        add_int8_variant(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _export_onnx(folder: Path, model: Any, parts: dict[str, Any] | None, tok_meta: dict[str, Any], context: int,
                 model_name: str) -> None:
    """Writes the ONNX Runtime-optimised tower and the meta file into `folder`: on the prefix
    up to the pooled token (`parts` given), else ``encode_text`` on the whole (CLIP) or unpadded
    (HF) tokens."""
    import contextlib

    import torch

    from cliptool.models.onnx_tower import torch_to_onnx

    if tok_meta["type"] == "clip_bpe":
        example = torch.as_tensor(ClipBpeTokenizer(folder / VOCAB_FILE, context, tok_meta["clean"])(["a dog", "x"]))
        if parts:
            example = example[:, :4]
    else:
        example = torch.as_tensor(HfTextTokenizer(folder / HF_TOKENIZER_FILE, context, tok_meta["clean"],
                                                  tok_meta["pad_id"])(["a dog in a park", "x"]))
    module = _prefix_module(parts) if parts else _full_module(model)
    tokens_axis = {0: "batch", 1: "tokens"} if parts or tok_meta["type"] == "hf" else {0: "batch"}
    raw = folder / "raw.onnx"
    try:
        with _traceable_attention(module) if parts else contextlib.nullcontext():
            with torch.no_grad():
                dim = int(module(example).shape[-1])
            torch_to_onnx(module, example, raw, "ids", "vector", {"ids": tokens_axis, "vector": {0: "batch"}})
    except Exception as exc:  # noqa: BLE001 - the tracer and exporter raise many kinds
        raise _unsupported(f"torch cannot export the text tower to ONNX ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())[:160]})") from exc
    for stale in (folder / MODEL_FILE, folder / WEIGHTS_FILE):
        stale.unlink(missing_ok=True)
    _session(raw, 1, optimised_to=folder / MODEL_FILE)
    raw.unlink()
    meta = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "model_name": model_name,
        "context_length": context, "output_dim": dim, "prefix": bool(parts),
        "pool_type": parts["pool_type"] if parts else None,
        "eos_id": int(parts["eos_id"]) if parts and parts["eos_id"] is not None else None,
        "tokenizer": tok_meta,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _save_tokenizer(folder: Path, tok_meta: dict[str, Any], oc_tokenizer: Any, context: int) -> None:
    """The vocabulary (CLIP) or tokenizer.json (HF) the torch-free tokenizer reads."""
    if tok_meta["type"] == "clip_bpe":
        from open_clip import tokenizer as oc_tok

        shutil.copyfile(oc_tok.default_bpe(), folder / VOCAB_FILE)
        # The vocabulary must give exactly open_clip's ids (e.g. not a custom bpe_path).
        check = ClipBpeTokenizer(folder / VOCAB_FILE, context, clean=tok_meta["clean"])
        vocab = check.encoder  # must be duplicate-free: ids are derived from merge ranks
        if len(vocab) != check.vocab_size or vocab != oc_tokenizer.encoder:
            raise _unsupported("tokenizer vocabulary differs from open_clip's default BPE vocabulary")
    else:
        oc_tokenizer.tokenizer.backend_tokenizer.save(str(folder / HF_TOKENIZER_FILE))


def _check_export(folder: Path, model: Any, oc_tokenizer: Any) -> None:
    """The exported encoder gives open_clip's token ids and vectors on CHECK_TEXTS, else raise."""
    import torch

    encoder = OnnxTextEncoder.load(folder, threads=1)
    want_ids = oc_tokenizer(CHECK_TEXTS).numpy()
    got_ids = encoder.tokenize(CHECK_TEXTS)
    if encoder.kind == "hf":  # unpadded: compare up to the longest, the rest is padding
        pad = encoder.meta["tokenizer"]["pad_id"]
        ok = got_ids.shape[1] <= want_ids.shape[1] and np.array_equal(want_ids[:, : got_ids.shape[1]], got_ids) \
            and bool((want_ids[:, got_ids.shape[1]:] == pad).all())
    else:
        ok = np.array_equal(want_ids, got_ids)
    if not ok:
        raise _unsupported("the torch-free tokenizer does not give open_clip's token ids")
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(torch.as_tensor(want_ids)).float(), dim=-1).numpy()
    got = encoder.encode_tokens(got_ids)
    singly = np.stack([encoder.encode(text) for text in CHECK_TEXTS])  # each on its own length
    worst = float(max(np.abs(got - want).max(), np.abs(singly - want).max()))
    if not worst <= ATOL:
        raise _unsupported(f"the exported tower differs from open_clip by {worst:.1e} (more than {ATOL:.0e})")


def add_int8_variant(folder: str | os.PathLike) -> dict[str, Any]:
    """Adds the int8 variant of the tower exported in `folder` and records it in the meta file.

    ONNX Runtime's dynamic quantisation (weight matrices to int8 per output channel, activations
    per query), then optimised and saved as the exact tower is. Kept only where its vectors reach
    a cosine of INT8_MIN_COSINE to the exact tower's on CHECK_TEXTS. Returns the meta entry:
    ``{"file", "min_cosine"}``, or ``{"unavailable": reason}``. Needs the onnx package (which
    torch's exporter uses), not torch; works on a copy, so a hard-linked export is never touched.
    """
    from cliptool import durable

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=folder))
    try:
        for name in (MODEL_FILE, WEIGHTS_FILE):
            if (folder / name).exists():
                shutil.copyfile(folder / name, work / name)
        try:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logging.disable(logging.WARNING)  # the quantiser's advice on pre-processing, to the root logger
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    quantize_dynamic(work / MODEL_FILE, work / "int8.onnx", per_channel=True, reduce_range=True,
                                     weight_type=QuantType.QInt8, use_external_data_format=True,
                                     op_types_to_quantize=["MatMul"],  # token tables too cost accuracy, no time
                                     extra_options={"MatMulConstBOnly": True,
                                                    "DefaultTensorType": onnx.TensorProto.FLOAT})
            finally:
                logging.disable(logging.NOTSET)
            _session(work / "int8.onnx", 1, optimised_to=work / INT8_MODEL_FILE, weights_file=INT8_WEIGHTS_FILE)
            exact = OnnxTextEncoder(folder, meta, threads=1)
            int8 = OnnxTextEncoder(work, {**meta, "int8": {"file": INT8_MODEL_FILE}}, threads=1, precision="int8")
            int8._tokenizer = exact.tokenizer  # (its files are in `folder`)
            cosine = min(float(exact.encode(text) @ int8.encode(text)) for text in CHECK_TEXTS)
            entry: dict[str, Any] = {"file": INT8_MODEL_FILE, "min_cosine": round(cosine, 6)}
            if not cosine >= INT8_MIN_COSINE:
                entry = {"unavailable": f"its vectors reach a cosine of only {cosine:.4f} to the exact ones"}
            else:  # into place whole (weights first): another process may be adding the same variant
                for name in (INT8_WEIGHTS_FILE, INT8_MODEL_FILE):
                    if (work / name).exists():
                        durable.sync_file(work / name)
                        durable.replace(work / name, folder / name)
        except Exception as exc:  # noqa: BLE001 - the quantiser and ONNX Runtime raise many kinds
            entry = {"unavailable": f"it could not be quantised ({type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:120]})"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # replaced, not rewritten: it may be hard-linked
    durable.write_text(folder / META_FILE, json.dumps({**meta, "int8": entry}, indent=2) + "\n")
    return entry


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
    """Rename directory `src` to `dst`, replacing an existing `dst`; `src` is synced first and
    the parent after (a crash leaves the old export or the whole new one)."""
    from cliptool import durable

    durable.sync_tree(src)
    if not dst.exists() and not dst.is_symlink():
        os.rename(src, dst)
        durable.sync_dir(dst.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.rmdir(old)
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)  # put the previous export back
        raise
    durable.sync_dir(dst.parent)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)

