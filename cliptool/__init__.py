"""cliptool: search a folder of videos by meaning with CLIP embeddings.

    import cliptool
    index = cliptool.Index.open("~/cliptool-index")
    index.index(["~/Videos"])
    hits = index.search("a dog in a park", top=5)        # or image="still.jpg"
    more = index.similar(hits[0].scene_id)
    index.export_frame("dog.jpg", "a dog in a park")
    cliptool.extract_keyframes("clip.mp4", "pictures/")

Names are imported on first use, so `import cliptool` (and `cliptool --help`) stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Index": "api", "extract_keyframes": "api", "model_spec": "api",
    "IndexOptions": "config", "KeyframeOptions": "analysis.keyframes", "Hit": "search.searcher",
    "IndexSummary": "index.indexer", "CheckReport": "index.check", "ExportResult": "writers.frame",
    "VideoRecord": "store", "SceneRecord": "store",
    "CliptoolError": "errors", "UsageError": "errors", "IndexMissingError": "errors",
    "IndexBusyError": "errors", "IndexMismatchError": "errors", "ModelUnavailableError": "errors",
    "VideoError": "errors", "ClusterError": "errors",
    "Query": "search.query", "QueryTerm": "search.query", "Filters": "search.filters",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from cliptool.api import Index, extract_keyframes, model_spec
    from cliptool.index.check import CheckReport
    from cliptool.config import IndexOptions
    from cliptool.errors import (CliptoolError, ClusterError, IndexBusyError, IndexMismatchError, IndexMissingError,
                         ModelUnavailableError, UsageError, VideoError)
    from cliptool.writers.frame import ExportResult
    from cliptool.index.indexer import IndexSummary
    from cliptool.analysis.keyframes import KeyframeOptions
    from cliptool.search.filters import Filters
    from cliptool.search.query import Query, QueryTerm
    from cliptool.search.searcher import Hit
    from cliptool.store import SceneRecord, VideoRecord


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cliptool' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"cliptool.{module}"), name)
    globals()[name] = value
    return value
