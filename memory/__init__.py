"""PathAsst case memory: the Chroma case store, ingestion, retrieval, evaluation and conversation checkpoints.

The embedders it uses live in :mod:`pathasst.core` (the tools use them too). Nothing heavy is imported here:
``open_library`` (used by the CLI, the graph, the ``similar_cases`` tool and the review app) imports Chroma and the
embedders on first use.
"""

from __future__ import annotations

from pathasst.memory.library import open_library

__all__ = ["open_library"]
