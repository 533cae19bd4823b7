"""Patch tissue-type classification: PathCLIP zero-shot over free labels or the nine CRC-100K classes.

Weights: ``PATHASST_PATHCLIP_WEIGHTS`` (the PathCLIP open_clip checkpoint, loaded by the memory package's embedder)
and, optionally, a linear-probe head on its embeddings in the setting ``tissue_probe_weights``
(``PATHASST_TISSUE_PROBE_WEIGHTS``; format in :mod:`pathasst.tools.backends.pathclip`). Which head answers:

* ``labels`` given: zero-shot over them (``'An image of {label}'``);
* ``preset`` given: the probe when its labels are that preset's labels (any order, case-insensitive), else zero-shot;
* neither: the probe over its own labels when one is configured, else zero-shot over the CRC-100K preset.

An image larger than 1.5 tiles (336 px at 0.5 um/px) is classified tile by tile (224 px tissue tiles, at most 256)
and the per-tile probabilities are averaged; the per-tile top labels go to the GeoJSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator, model_validator

from pathasst.tools.base import ToolInput, ToolOutput, ToolResult
from pathasst.tools.deep import DeepTool, WeightsFormat
from pathasst.tools.imaging import ImageData

__all__ = [
    "CRC100K_LABELS",
    "PROMPT_TEMPLATE",
    "Preset",
    "TissueClassificationInput",
    "TissueClassificationOutput",
    "TissueClassificationTool",
]

Preset = Literal["crc100k"]

#: the nine tissue classes of NCT-CRC-HE-100K (Kather et al. 2018), in the dataset's order ADI..TUM
CRC100K_LABELS: tuple[str, ...] = (
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
)
PRESETS: dict[str, tuple[str, ...]] = {"crc100k": CRC100K_LABELS}

#: PathCLIP's zero-shot prompt
PROMPT_TEMPLATE = "An image of {}"


class TissueClassificationInput(ToolInput):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"image": "patch.png", "preset": "crc100k"},
                {"image": "patch.png", "labels": ["tumour", "stroma", "necrosis"]},
            ]
        }
    )

    labels: list[str] | None = Field(
        None,
        min_length=2,
        max_length=64,
        description="Candidate tissue labels for zero-shot classification (2..64 distinct phrases, e.g. "
        "['tumour', 'stroma', 'necrosis']). Give either labels or preset; neither = preset 'crc100k'.",
    )
    preset: Preset | None = Field(
        None, description="A named label set: 'crc100k' = the nine CRC-100K colorectal tissue classes."
    )

    @field_validator("labels")
    @classmethod
    def _clean_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        cleaned = [s.strip() for s in v]
        if any(not s for s in cleaned):
            raise ValueError("labels must be non-empty phrases")
        if len({s.lower() for s in cleaned}) != len(cleaned):
            raise ValueError("labels must be distinct")
        return cleaned

    @model_validator(mode="after")
    def _one_label_source(self) -> TissueClassificationInput:
        if self.labels is not None and self.preset is not None:
            raise ValueError("give either labels or preset, not both")
        return self

    def label_set(self) -> list[str]:
        """The candidate labels this call classifies over."""
        if self.labels is not None:
            return list(self.labels)
        return list(PRESETS[self.preset or "crc100k"])


class TissueClassificationOutput(ToolOutput):
    labels: list[str] = Field(default_factory=list, description="The candidate labels, in the order used.")
    probabilities: dict[str, float] | None = Field(
        None, description="Softmax probability per candidate label (sums to 1); None if not run."
    )
    top_label: str | None = Field(None, description="The most probable label; None if not run.")
    top_probability: float | None = Field(None, ge=0, le=1, description="Probability of top_label; None if not run.")
    prompt_template: str = Field(PROMPT_TEMPLATE, description="Text prompt each label was inserted into.")
    head: Literal["zero_shot", "linear_probe"] | None = Field(
        None, description="Which head produced the probabilities: PathCLIP zero-shot or the linear probe."
    )
    n_tiles: int | None = Field(
        None, ge=1, description="Number of 224-px tiles classified (1 = the image whole); None if not run."
    )


class TissueClassificationTool(DeepTool):
    name: ClassVar[str] = "tissue_classification"
    description: ClassVar[str] = (
        "Classifies the tissue type of an image patch with PathCLIP zero-shot (prompt 'An image of {label}'): "
        "either over your own candidate labels (e.g. ['tumour', 'stroma', 'necrosis', 'normal mucosa']) or over "
        "the nine CRC-100K colorectal classes (preset 'crc100k', the default). Returns a probability per label and "
        "the top label (a configured linear-probe head answers instead when no labels are given). Use to answer "
        "'what tissue is this?' or to check whether a patch is tumour before measuring; works best on ~224 px "
        "patches at 0.5 um/px (larger images are classified tile by tile and averaged; use region for one area). "
        "Requires the PathCLIP checkpoint (PATHASST_PATHCLIP_WEIGHTS), otherwise it answers 'not configured'."
    )
    version: ClassVar[str] = "0.2.0"
    input_model: ClassVar[type[ToolInput]] = TissueClassificationInput
    output_model: ClassVar[type[ToolOutput]] = TissueClassificationOutput
    working_mpp: ClassVar[float | None] = 0.5
    weights_setting: ClassVar[str] = "pathclip_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".bin", ".safetensors")
    weights_kind: ClassVar[str] = "the PathCLIP open_clip checkpoint (pathclip-base.pt)"
    backend_name: ClassVar[str] = "pathclip"

    def not_configured_output(self, image: ImageData, args: ToolInput) -> ToolOutput:
        labels = args.label_set() if isinstance(args, TissueClassificationInput) else list(CRC100K_LABELS)
        return TissueClassificationOutput(
            status="not_configured", message=self.not_configured_message(), backend="none", labels=labels
        )

    #: settings field of the optional linear-probe head (not a required weight)
    probe_setting: ClassVar[str] = "tissue_probe_weights"

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
        from pathasst.tools.backends.pathclip import LinearProbe, pathclip_embedder

        self._embedder = pathclip_embedder(self.settings)
        self._probe = None
        probe_path = getattr(self.settings, self.probe_setting, None)
        if probe_path:
            probe = LinearProbe.load(Path(probe_path), self.probe_setting)
            probe.check_dimension(self._embedder.dimension)
            self._probe = probe
        self._text_cache: dict[str, np.ndarray] = {}
        self.model_description = "PathCLIP open_clip ViT-B-16 (QuickGELU), zero-shot" + (
            f" + linear probe ({len(self._probe.labels)} labels)" if self._probe else ""
        )

    def _head_for(self, args: TissueClassificationInput) -> tuple[str, list[str]]:
        probe = self._probe
        if args.labels is not None or probe is None:
            return "zero_shot", args.label_set()
        if args.preset is None:
            return "linear_probe", list(probe.labels)
        wanted = {s.lower() for s in PRESETS[args.preset]}
        if {s.lower() for s in probe.labels} == wanted:
            return "linear_probe", list(probe.labels)
        return "zero_shot", args.label_set()

    def _text_embeddings(self, labels: list[str]) -> np.ndarray:
        missing = [lab for lab in labels if lab not in self._text_cache]
        if missing:
            vecs = self._embedder.embed_texts([PROMPT_TEMPLATE.format(lab) for lab in missing])
            self._text_cache.update(zip(missing, vecs))
        return np.stack([self._text_cache[lab] for lab in labels])

    def _analyze_deep(self, image: ImageData, args: ToolInput) -> ToolResult:
        from pathasst.tools.backends.pathclip import embed_tiles, patch_tiles, zero_shot_probabilities
        from pathasst.tools.backends.render import caption
        from pathasst.tools.backends.runtime import working_image
        from pathasst.tools.geojson import polygon_feature

        assert isinstance(args, TissueClassificationInput)
        head, labels = self._head_for(args)
        work = working_image(image, self.working_mpp)
        tiles = patch_tiles(work.pixels)
        emb = embed_tiles(self._embedder, tiles.tiles)
        if head == "linear_probe":
            assert self._probe is not None
            per_tile = self._probe.probabilities(emb)
        else:
            per_tile = zero_shot_probabilities(emb, self._text_embeddings(labels))
        probs = per_tile.mean(axis=0)
        probs = probs / probs.sum()
        top = int(np.argmax(probs))
        out = TissueClassificationOutput(
            backend="pathclip",
            labels=labels,
            probabilities={lab: round(float(p), 6) for lab, p in zip(labels, probs)},
            top_label=labels[top],
            top_probability=round(float(probs[top]), 6),
            head=head,  # type: ignore[arg-type]
            n_tiles=len(tiles.tiles),
        )
        if not tiles.whole and tiles.n_tissue > len(tiles.tiles):
            image.notes.append(f"tissue_classification: {len(tiles.tiles)} of {tiles.n_tissue} tissue tiles classified")
        # GeoJSON: one tile feature per classified tile (its top label), in level-0 coordinates of the source
        features = []
        k = work.scale / image.scale  # work-array pixels -> image-array pixels
        for (x0, y0, x1, y1), p in zip(tiles.rects, per_tile):
            ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64) * k
            j = int(np.argmax(p))
            meas = {f"P({lab})": round(float(v), 4) for lab, v in zip(labels, p)}
            features.append(polygon_feature([ring], image, labels[j], "tile", meas))
        ranked = np.argsort(-probs)[:3]
        lines = [f"{labels[i]}: {probs[i]:.2f}" for i in ranked]
        overlay = caption(image.pixels, [f"tissue ({head.replace('_', ' ')})", *lines])
        return ToolResult(output=out, overlay=overlay, features=features)

    def summarize(self, output: ToolOutput) -> str:
        if output.status != "ok" or not isinstance(output, TissueClassificationOutput) or not output.probabilities:
            return super().summarize(output)
        ranked = sorted(output.probabilities.items(), key=lambda kv: -kv[1])[:3]
        body = ", ".join(f"{k} {v:.2f}" for k, v in ranked)
        return f"{self.name} ({output.head}, {output.n_tiles} tile(s)): top {output.top_label} ({output.top_probability:.2f}); {body}"
