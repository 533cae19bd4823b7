"""Attention-based multiple-instance learning (ABMIL, Ilse et al. 2018, gated attention) over tile embeddings.

Weights (``PATHASST_SLIDE_MIL_WEIGHTS``): the state dict of :func:`build_abmil` with its config, as
``torch.save({"state_dict": model.state_dict(), "config": {...}}, "abmil.pt")`` or a plain state dict /
``.safetensors`` with a sidecar ``abmil.json``. Config keys:

===============  ========  ==========================================================================================
key              required  meaning
===============  ========  ==========================================================================================
``labels``       yes       slide-level class names, in the order of the classifier's outputs
``tile_mpp``     no (0.5)  microns per pixel the tiles were embedded at
``tile_size``    no (224)  tile side in pixels at ``tile_mpp`` (PathCLIP's input size)
``min_tissue``   no (0.5)  smallest tissue fraction of a tile that is used
``embedder``     no        ``"pathclip"`` (PathCLIP's image tower, 512-d), ``"tissue_net"`` (the shipped tissue
                           network's pooled features, 256-d) or ``"hed_texture"`` (the weight-free ``hed-texture-v1``
                           descriptor of stain, texture and nuclear shape, 171-d; :mod:`pathasst.core.descriptor`)
``embed_mpp``    no        tiles of known mpp are resampled to this before embedding (default: as cut)
``feature_mean`` no        per-dimension mean and standard deviation the embeddings are standardised with
``feature_std``            before the head (lists of ``in_dim`` numbers; default: none)
===============  ========  ==========================================================================================

A **seed ensemble** is one state dict holding K heads of the same shape under ``members.0.``, ``members.1.``, ...
(:func:`ensemble_state_dict`; optional config ``ensemble``: K); its class probabilities and attention weights are the
means of its members'. A plain state dict is a one-member ensemble, so single-head checkpoints load as before.

Layer sizes (input, hidden and attention widths, gated or not) are read from the state dict. The model:
``h = ReLU(W1 x)``; attention ``a = softmax(w^T (tanh(V h) * sigmoid(U h)))`` over the tiles (``U`` absent when not
gated); slide logits ``= C (sum a_i h_i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.errors import WeightsError
from pathasst.core.settings import Settings
from pathasst.core.weights import Checkpoint, WeightsFormat, read_checkpoint
from pathasst.tools.backends.runtime import configure_threads, load_state, torch_device

__all__ = ["EMBEDDERS", "ABMILConfig", "ABMILHead", "build_abmil", "ensemble_members", "ensemble_state_dict"]

#: tile embedders an ABMIL head may have been trained on
EMBEDDERS = ("pathclip", "tissue_net", "hed_texture")


def build_abmil(in_dim: int, n_classes: int, hidden_dim: int = 256, attention_dim: int = 128, gated: bool = True) -> Any:
    """The ABMIL module: ``forward(x: (N, in_dim)) -> (logits (n_classes,), attention (N,))``."""
    import torch
    from torch import nn

    class ABMIL(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
            self.attention_v = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Tanh())
            self.attention_u = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Sigmoid()) if gated else None
            self.attention_w = nn.Linear(attention_dim, 1)
            self.classifier = nn.Linear(hidden_dim, n_classes)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.fc(x)
            a = self.attention_v(h)
            if self.attention_u is not None:
                a = a * self.attention_u(h)
            att = torch.softmax(self.attention_w(a).squeeze(-1), dim=0)
            return self.classifier(att @ h), att

    return ABMIL()


def ensemble_state_dict(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One state dict holding the heads ``states`` as the members of a seed ensemble (``members.K.<key>``)."""
    return {f"members.{k}.{key}": v for k, sd in enumerate(states) for key, v in sd.items()}


def ensemble_members(state_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """The member state dicts of an ensemble state dict, in order; a plain state dict is its only member."""
    if not any(key.startswith("members.") for key in state_dict):
        return [state_dict]
    members: dict[int, dict[str, Any]] = {}
    for key, v in state_dict.items():
        head, _, rest = key.partition(".")[2].partition(".")
        if not key.startswith("members.") or not head.isdigit() or not rest:
            raise WeightsError(f"ensemble state dict: key {key!r} is not 'members.<k>.<name>'")
        members.setdefault(int(head), {})[rest] = v
    if sorted(members) != list(range(len(members))):
        raise WeightsError(f"ensemble state dict: members {sorted(members)} are not numbered 0..{len(members) - 1}")
    return [members[k] for k in range(len(members))]


@dataclass
class ABMILConfig:
    labels: list[str]
    in_dim: int
    hidden_dim: int
    attention_dim: int
    gated: bool
    tile_mpp: float = 0.5
    tile_size: int = 224
    min_tissue: float = 0.5
    embedder: str = "pathclip"
    embed_mpp: float | None = None
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None
    members: int = 1

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> ABMILConfig:
        labels = ckpt.require("labels", list)
        if len(labels) < 2 or not all(isinstance(s, str) and s.strip() for s in labels) or len(set(labels)) != len(labels):
            raise WeightsError(f"ABMIL head {ckpt.where()}: 'labels' must be >= 2 distinct names, got {labels!r}")
        members = ensemble_members(ckpt.state_dict)
        shapes = {k: tuple(v.shape) for k, v in members[0].items()}
        if any({k: tuple(v.shape) for k, v in m.items()} != shapes for m in members[1:]):
            raise WeightsError(f"ABMIL ensemble {ckpt.where()}: its {len(members)} members differ in keys or shapes")
        sd = members[0]
        needed = ("fc.0.weight", "attention_v.0.weight", "attention_w.weight", "classifier.weight")
        missing = [k for k in needed if k not in sd]
        if missing:
            raise WeightsError(f"ABMIL head {ckpt.where()} lacks {missing} (keys found: {sorted(sd)[:6]})")
        hidden, in_dim = (int(v) for v in sd["fc.0.weight"].shape)
        att = int(sd["attention_v.0.weight"].shape[0])
        n_cls = int(sd["classifier.weight"].shape[0])
        if n_cls != len(labels):
            raise WeightsError(f"ABMIL head {ckpt.where()} has {n_cls} outputs but {len(labels)} labels {labels}")
        cfg = cls(
            labels=[s.strip() for s in labels], in_dim=in_dim, hidden_dim=hidden, attention_dim=att,
            gated="attention_u.0.weight" in sd, members=len(members),
        )
        if "tile_mpp" in ckpt.config:
            cfg.tile_mpp = float(ckpt.require("tile_mpp", (int, float)))
        if "tile_size" in ckpt.config:
            cfg.tile_size = int(ckpt.require("tile_size", int))
        if "min_tissue" in ckpt.config:
            cfg.min_tissue = float(ckpt.require("min_tissue", (int, float)))
        if "embedder" in ckpt.config:
            cfg.embedder = str(ckpt.require("embedder", str))
        if cfg.embedder not in EMBEDDERS:
            raise WeightsError(f"ABMIL head {ckpt.where()}: embedder {cfg.embedder!r} is not supported "
                               f"(one of {', '.join(EMBEDDERS)})")
        if ckpt.config.get("embed_mpp") is not None:
            cfg.embed_mpp = float(ckpt.require("embed_mpp", (int, float)))
        for key in ("feature_mean", "feature_std"):
            if ckpt.config.get(key) is not None:
                v = ckpt.require(key, list)
                if len(v) != in_dim or not all(isinstance(x, (int, float)) for x in v):
                    raise WeightsError(f"ABMIL head {ckpt.where()}: {key} must list {in_dim} numbers")
                setattr(cfg, key, [float(x) for x in v])
        if not (0.05 <= cfg.tile_mpp <= 64 and 16 <= cfg.tile_size <= 4096 and 0.0 <= cfg.min_tissue <= 1.0):
            raise WeightsError(f"ABMIL head {ckpt.where()}: tile_mpp / tile_size / min_tissue out of range")
        return cfg


class ABMILHead:
    """A loaded ABMIL head: :meth:`predict` maps ``(N, in_dim)`` embeddings to class probabilities and attention."""

    def __init__(self, models: list[Any], config: ABMILConfig, device: Any) -> None:
        self.models = models
        self.config = config
        self.device = device

    @classmethod
    def load(cls, path: Path, setting: str, fmt: WeightsFormat, settings: Settings) -> ABMILHead:
        configure_threads(settings)
        ckpt = read_checkpoint(path, setting, fmt)
        cfg = ABMILConfig.from_checkpoint(ckpt)
        device = torch_device()
        what = f"an ABMIL head ({cfg.in_dim} -> {cfg.hidden_dim}, attention {cfg.attention_dim}, gated {cfg.gated})"
        models = []
        for member in ensemble_members(ckpt.state_dict):
            model = build_abmil(cfg.in_dim, len(cfg.labels), cfg.hidden_dim, cfg.attention_dim, cfg.gated)
            load_state(model, Checkpoint(member, ckpt.config, ckpt.path, ckpt.setting), what)
            models.append(model.to(device).eval())
        return cls(models, cfg, device)

    def describe(self) -> str:
        c = self.config
        what = {"pathclip": "PathCLIP", "tissue_net": "tissue-network", "hed_texture": "hed-texture"}[c.embedder]
        seeds = f"mean of {c.members} seeds, " if c.members > 1 else ""
        return (f"ABMIL ({seeds}{'gated ' if c.gated else ''}attention, {c.in_dim}-d {what} tiles at {c.tile_mpp} um/px, "
                f"labels {c.labels})")

    def predict(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``(C,)`` and attention weights ``(N,)`` (summing to 1) of one bag: the members' means."""
        import torch

        emb = np.asarray(embeddings, dtype=np.float32)
        if self.config.feature_mean is not None and emb.ndim == 2 and emb.shape[1] == self.config.in_dim:
            emb = (emb - np.asarray(self.config.feature_mean, np.float32)) / np.asarray(self.config.feature_std or 1.0, np.float32)
        x = torch.as_tensor(emb, device=self.device)
        if x.ndim != 2 or x.shape[1] != self.config.in_dim or x.shape[0] == 0:
            raise ValueError(f"expected (N >= 1, {self.config.in_dim}) embeddings, got {tuple(x.shape)}")
        probs, atts = [], []
        with torch.inference_mode():
            for model in self.models:
                logits, att = model(x)
                probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64))
                atts.append(att.float().cpu().numpy().astype(np.float64))
        return np.mean(probs, axis=0), np.mean(atts, axis=0)
