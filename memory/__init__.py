"""PathAsst case memory: the Chroma case store, ingestion, retrieval, evaluation and conversation checkpoints.

The embedders it uses live in :mod:`pathasst.core` (the tools use them too). The tools reach the library only
through this package's names (``open_library``, ``image_vectors``, ``StoreError``), never its modules. Nothing heavy is imported here:
``open_library`` (used by the CLI, the graph, the ``similar_cases`` tool and the review app) imports Chroma and the
embedders on first use.
"""

from __future__ import annotations

from pathasst.memory.ingest import image_vectors
from pathasst.memory.library import open_library
from pathasst.memory.store import StoreError

__all__ = ["StoreError", "image_vectors", "open_library"]
