"""PathAsst case memory: the Chroma case store, ingestion, retrieval, evaluation and conversation checkpoints.

The embedders it uses live in :mod:`pathasst.core` (the tools use them too). Nothing heavy is imported here:
``open_library`` (used by the CLI, the graph, the ``similar_cases`` tool and the review app) imports Chroma and the
embedders on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathasst.core.settings import Settings

__all__ = ["open_library"]


def open_library(settings: Settings, image_embedder_name: str | None = None, text_embedder_name: str | None = None) -> Any:
    """The case library configured by ``settings`` (a :class:`pathasst.memory.library.CaseLibrary`)."""
    from pathasst.memory.library import open_library as _open

    return _open(settings, image_embedder_name, text_embedder_name)
