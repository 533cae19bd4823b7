"""The PathAsst model: vision tower (open_clip visual, PathCLIP) -> projector -> causal language model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathasst.finetune.vlm.conversation import IGNORE_INDEX, IMAGE_PLACEHOLDER

__all__ = ["PROJECTORS", "PathAsstVLM", "build_projector", "load_language_model", "load_vision_tower"]

PROJECTORS = ("linear", "mlp2x_gelu")


def build_projector(kind: str, vision_width: int, lm_width: int) -> nn.Module:
    """LLaVA's projectors: ``linear`` or ``mlp2x_gelu`` (Linear -> GELU -> Linear)."""
    if kind == "linear":
        return nn.Linear(vision_width, lm_width)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(vision_width, lm_width), nn.GELU(), nn.Linear(lm_width, lm_width))
    raise ValueError(f"unknown projector {kind!r}; valid: {', '.join(PROJECTORS)}")


def load_vision_tower(model: str = "ViT-B-16", *, model_config: Path | None = None, checkpoint: Path | None = None) -> tuple[nn.Module, Any]:
    """(open_clip visual tower returning patch tokens, eval transform); PathCLIP weights via memory's loader."""
    from pathasst.finetune.clip import build_clip

    clip, _, eval_tf, _ = build_clip(model, model_config=model_config, checkpoint=checkpoint)
    visual = clip.visual
    visual.output_tokens = True
    return visual, eval_tf


def load_language_model(path_or_config: Any, dtype: Any = None) -> nn.Module:
    """A HF causal LM from a folder / hub-style name (Vicuna-13b at full scale) or a config object (tiny tests)."""
    from transformers import AutoModelForCausalLM

    if isinstance(path_or_config, (str, Path)):
        return AutoModelForCausalLM.from_pretrained(str(path_or_config), dtype=dtype or torch.float32)
    return AutoModelForCausalLM.from_config(path_or_config)


class PathAsstVLM(nn.Module):
    """Vision tokens, projected to the LM width, are spliced in where the ids hold ``IMAGE_PLACEHOLDER``."""

    def __init__(self, vision: nn.Module, projector: nn.Module, lm: nn.Module) -> None:
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.lm = lm

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        _, tokens = self.vision(images)  # (B, N, width): patch tokens after ln_post
        return self.projector(tokens)

    def embed(self, ids: list[list[int]], images: torch.Tensor | None, labels: list[list[int]] | None = None):
        """(inputs_embeds, attention_mask, labels) for a batch, right-padded."""
        emb_layer = self.lm.get_input_embeddings()
        img = self.image_tokens(images) if images is not None else None
        rows, lab_rows = [], []
        for b, seq in enumerate(ids):
            pieces, lab = [], []
            t = torch.tensor([i if i != IMAGE_PLACEHOLDER else 0 for i in seq])
            e = emb_layer(t)
            start = 0
            for pos, tok in enumerate(seq + [None]):
                if tok == IMAGE_PLACEHOLDER or tok is None:
                    pieces.append(e[start:pos])
                    if labels is not None:
                        lab += labels[b][start:pos]
                    if tok == IMAGE_PLACEHOLDER:
                        if img is None:
                            raise ValueError("an <image> token but no image")
                        pieces.append(img[b])
                        lab += [IGNORE_INDEX] * img.shape[1]
                    start = pos + 1
            rows.append(torch.cat(pieces))
            lab_rows.append(lab)
        width = max(r.shape[0] for r in rows)
        dim = rows[0].shape[1]
        out = rows[0].new_zeros((len(rows), width, dim))
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        lab_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for b, r in enumerate(rows):
            out[b, : r.shape[0]] = r
            mask[b, : r.shape[0]] = 1
            if labels is not None:
                lab_t[b, : r.shape[0]] = torch.tensor(lab_rows[b])
        return out, mask, (lab_t if labels is not None else None)

    def forward(self, ids: list[list[int]], images: torch.Tensor | None, labels: list[list[int]]) -> torch.Tensor:
        embeds, mask, lab = self.embed(ids, images, labels)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=lab).loss

    @torch.no_grad()
    def generate(self, ids: list[int], image: torch.Tensor | None, *, max_new_tokens: int = 64, eos_token_id: int | None = None) -> list[int]:
        """Greedy decoding (no cache: the reference path for small models and tests)."""
        self.eval()
        embeds, mask, _ = self.embed([ids], image[None] if image is not None else None)
        emb_layer = self.lm.get_input_embeddings()
        out: list[int] = []
        for _ in range(max_new_tokens):
            logits = self.lm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1]
            nxt = int(logits.argmax())
            if eos_token_id is not None and nxt == eos_token_id:
                break
            out.append(nxt)
            embeds = torch.cat([embeds, emb_layer(torch.tensor([[nxt]]))], dim=1)
            mask = torch.cat([mask, torch.ones((1, 1), dtype=torch.long)], dim=1)
        return out


def save_meta(path: Path, meta: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(meta, indent=2, default=str))
