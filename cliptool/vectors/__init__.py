"""Search structures derived from the stores and rebuilt from them: the FAISS cache (faiss)
and a Milvus collection (milvus)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cliptool.vectors.base import VectorBackend


def open_vectors(index_dir: Path, override: str | None = None) -> VectorBackend:
    """What a search asks for vectors: the FAISS cache, or the Milvus collection recorded in the
    index (or named by `override`), caught up with the stores first when it lags."""
    from cliptool.vectors.milvus import MilvusVectors, resolve_target

    target = resolve_target(index_dir, override)
    if target is None:
        from cliptool.vectors.faiss import load_vector_index

        return load_vector_index(index_dir)
    return MilvusVectors.open(index_dir, target)
