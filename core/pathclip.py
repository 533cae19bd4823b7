"""``pathclip``: PathCLIP image and text towers (open_clip ViT-B-16, QuickGELU) from a local checkpoint.

The released ``pathclip-base.pt`` is an open_clip state dict (599 MB, fp32). Also accepted: an open_clip training
checkpoint (``{"state_dict": ...}``, with or without DistributedDataParallel's ``module.`` prefix) and a
``.safetensors`` file of the same tensors. Nothing is downloaded: the architecture is built with ``pretrained=None``
and the tokenizer's vocabulary ships inside open_clip.

A missing, corrupt or mismatched file raises :class:`~pathasst.core.errors.WeightsError` naming
``PATHASST_PATHCLIP_WEIGHTS``. Vectors are L2-normalised, 512-d; inference runs under ``torch.inference_mode`` with
``Settings.torch_threads`` threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pathasst.core.embedding import Embedder, EmbedderError
from pathasst.core.errors import WeightsError
from pathasst.core.imaging import as_rgb_uint8
from pathasst.core.settings import Settings
from pathasst.core.weights import check_weights_file, file_sha256, load_torch_file

__all__ = ["ARCHITECTURE", "PathCLIPEmbedder", "load_pathclip_state_dict"]

#: open_clip model name and options of PathCLIP
ARCHITECTURE = "ViT-B-16"
SETTING = "pathclip_weights"
ENV_VAR = "PATHASST_PATHCLIP_WEIGHTS"
SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _where(path: Path) -> str:
    return f"{ENV_VAR} ({SETTING}) = {str(path)!r}"


def load_pathclip_state_dict(path: Path) -> dict[str, Any]:
    """Read the tensors of a PathCLIP checkpoint (no code execution: ``weights_only``); raise ``WeightsError``."""
    import torch

    path = Path(path)
    fmt = check_weights_file(path, SETTING, SUFFIXES)
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = load_torch_file(path, _where(path))
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a bad file; all mean "corrupt"
        raise WeightsError(f"cannot read PathCLIP weights {_where(path)}: {type(exc).__name__}: {exc}") from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"PathCLIP weights {_where(path)} are not a state dict of tensors (got {type(sd).__name__})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextmanager
def _quiet_no_pretrained() -> Iterator[None]:
    flt = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


class PathCLIPEmbedder(Embedder):
    """PathCLIP (open_clip ViT-B-16 with QuickGELU) image and text embeddings, 512-d."""

    name: ClassVar[str] = "pathclip-vitb16"
    dimension: ClassVar[int] = 512
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    tile_size: ClassVar[int] = 224

    def __init__(self, weights: Path, threads: int | None = None, batch_size: int = 16) -> None:
        super().__init__(batch_size)
        self.weights = Path(weights)
        self.threads = threads
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._fingerprint: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PathCLIPEmbedder:
        path = getattr(settings, SETTING, None)
        if not path:
            raise EmbedderError(f"the pathclip embedder needs {ENV_VAR}: set it to the PathCLIP checkpoint (pathclip-base.pt)")
        return cls(Path(path), threads=getattr(settings, "torch_threads", None))

    def fingerprint(self) -> str:
        """``pathclip-vitb16:<first 16 hex digits of the weights' sha256>``."""
        if self._fingerprint is None:
            if not self.weights.is_file():
                raise WeightsError(f"weights file not found: {_where(self.weights)}")
            self._fingerprint = f"{self.name}:{file_sha256(self.weights)[:16]}"
        return self._fingerprint

    def info(self) -> dict[str, Any]:
        return {**super().info(), "architecture": f"open_clip {ARCHITECTURE} (QuickGELU)", "weights": str(self.weights)}

    def _load(self) -> None:
        import open_clip
        import torch

        sd = load_pathclip_state_dict(self.weights)
        if self.threads:
            torch.set_num_threads(int(self.threads))
        with _quiet_no_pretrained():  # open_clip warns "initialized randomly" before we load the weights
            model = open_clip.create_model(ARCHITECTURE, pretrained=None, force_quick_gelu=True)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            own = set(model.state_dict())
            missing, unexpected = sorted(own - set(sd)), sorted(set(sd) - own)
            detail = (
                f"missing {len(missing)} keys (e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]})"
                if missing or unexpected
                else str(exc).splitlines()[0]
            )
            raise WeightsError(
                f"PathCLIP weights {_where(self.weights)} do not fit open_clip {ARCHITECTURE}: {detail}"
            ) from exc
        model.eval()
        self._model = model
        self._preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
        self._tokenizer = open_clip.get_tokenizer(ARCHITECTURE)

    def _embed_image_batch(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        batch = torch.stack([self._preprocess(Image.fromarray(as_rgb_uint8(im))) for im in images])
        with torch.inference_mode():
            feats = self._model.encode_image(batch, normalize=True)
        return feats.float().numpy()

    def _embed_text_batch(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self._tokenizer(texts)
        with torch.inference_mode():
            feats = self._model.encode_text(tokens, normalize=True)
        return feats.float().numpy()
