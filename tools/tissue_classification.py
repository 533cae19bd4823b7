"""Tissue classification: the project's own tissue network (six EBHI-Seg colorectal classes, shipped), or PathCLIP
zero-shot over free labels or the nine CRC-100K classes when PathCLIP is configured.

Embedded backend (``PATHASST_PATHCLIP_WEIGHTS`` unset): the shipped tissue network
(:mod:`pathasst.tools.backends.tissue_net`, model card ``tools/weights/TISSUE_MODEL_CARD.md``) classifies 224 px tissue
tiles at its 1.25 um/px (images of known mpp are resampled to it; of unknown mpp, analysed as they are, i.e. as if at
EBHI-Seg's scale) into Normal, Polyp, Low-grade IN, High-grade IN, Adenocarcinoma, Serrated adenoma; tile
probabilities are averaged, weighted by their tissue fraction. Every tile is also checked against the training domain
(:func:`pathasst.tools.backends.tissue_tiles.domain_check`): an image that is not H&E, or whose tiles mostly look unlike
the training images, gets ``in_domain: false`` and a ``domain_warning`` in plain words. Free ``labels`` and the
``crc100k`` preset need PathCLIP: without it the six classes answer and the message says so.

PathCLIP weights: ``PATHASST_PATHCLIP_WEIGHTS`` (the PathCLIP open_clip checkpoint, loaded by the memory package's embedder)
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

from pathasst.core.errors import ToolExecutionError
from pathasst.core.imaging import ImageData
from pathasst.core.weights import WeightsFormat
from pathasst.tools.backends.pathclip import (
    LinearProbe,
    embed_tiles,
    patch_tiles,
    pathclip_embedder,
    zero_shot_probabilities,
)
from pathasst.tools.backends.render import caption, class_map_overlay
from pathasst.tools.backends.runtime import working_image
from pathasst.tools.backends.tissue_net import EBHI_CLASSES
from pathasst.tools.backends.tissue_tiles import SHIPPED_TISSUE_WEIGHTS, domain_check, shipped_tissue_net, tissue_tiles
from pathasst.tools.base import ToolInput, ToolOutput, ToolResult
from pathasst.tools.deep import DeepTool
from pathasst.tools.geojson import polygon_feature
from pathasst.tools.planning import PlanExample, PlanningHints

__all__ = [
    "CRC100K_LABELS",
    "EBHI_LABELS",
    "PROMPT_TEMPLATE",
    "Preset",
    "TissueClassificationInput",
    "TissueClassificationOutput",
    "TissueClassificationTool",
]

Preset = Literal["crc100k", "ebhi"]

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
#: the six diagnostic classes of EBHI-Seg (colorectal biopsies), the embedded network's classes
EBHI_LABELS: tuple[str, ...] = EBHI_CLASSES
PRESETS: dict[str, tuple[str, ...]] = {"crc100k": CRC100K_LABELS, "ebhi": EBHI_LABELS}
#: overlay / GeoJSON colour of each EBHI class
EBHI_COLORS: dict[str, tuple[int, int, int]] = {
    "Normal": (0, 160, 0),
    "Polyp": (0, 170, 200),
    "Low-grade IN": (230, 200, 0),
    "High-grade IN": (240, 120, 0),
    "Adenocarcinoma": (210, 0, 0),
    "Serrated adenoma": (150, 60, 200),
}

#: PathCLIP's zero-shot prompt
PROMPT_TEMPLATE = "An image of {}"


class TissueClassificationInput(ToolInput):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"image": "patch.png"},
                {"image": "patch.png", "preset": "crc100k"},
                {"image": "patch.png", "labels": ["tumour", "stroma", "necrosis"]},
            ]
        }
    )

    labels: list[str] | None = Field(
        None,
        min_length=2,
        max_length=64,
        description="Candidate tissue labels for zero-shot classification with PathCLIP (2..64 distinct phrases, e.g. "
        "['tumour', 'stroma', 'necrosis']). Give either labels or preset; neither = the embedded network's six "
        "EBHI-Seg classes (or 'crc100k' when PathCLIP is configured).",
    )
    preset: Preset | None = Field(
        None,
        description="A named label set: 'ebhi' = the six EBHI-Seg colorectal biopsy classes of the embedded network "
        "(Normal, Polyp, Low-grade IN, High-grade IN, Adenocarcinoma, Serrated adenoma); 'crc100k' = the nine "
        "CRC-100K tissue classes (PathCLIP).",
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
    prompt_template: str | None = Field(
        PROMPT_TEMPLATE, description="Text prompt each label was inserted into (PathCLIP zero-shot; None otherwise)."
    )
    head: Literal["zero_shot", "linear_probe", "embedded"] | None = Field(
        None,
        description="Which head produced the probabilities: PathCLIP zero-shot, the linear probe, or the embedded "
        "tissue network (six EBHI-Seg classes).",
    )
    n_tiles: int | None = Field(
        None, ge=0, description="Number of 224-px tiles classified (1 = the image whole; 0 = no tissue); None if not run."
    )
    tile_counts: dict[str, int] | None = Field(
        None, description="Embedded network: how many tiles had each label as their top label (the per-tile class map)."
    )
    in_domain: bool | None = Field(
        None,
        description="Embedded network: False when the image is not H&E or its tiles mostly look unlike the "
        "training images (colorectal biopsies); the probabilities are then not reliable. None if not judged.",
    )
    out_of_domain_fraction: float | None = Field(
        None, ge=0, le=1, description="Embedded network: share of tiles whose features lie beyond the training spread."
    )
    domain_warning: str | None = Field(None, description="Why the image is out of the network's domain, in plain words.")


class TissueClassificationTool(DeepTool):
    name: ClassVar[str] = "tissue_classification"
    planning: ClassVar[PlanningHints] = PlanningHints(
        order=50, examples=(PlanExample(question="Which tissue class does this tile show?", stain="H&E", image="patch"),)
    )
    description: ClassVar[str] = (
        "Classifies the tissue of an H&E image: by default with the project's own network trained on colorectal "
        "biopsies into six diagnostic classes (Normal, Polyp, Low-grade IN, High-grade IN, Adenocarcinoma, "
        "Serrated adenoma; IN = intraepithelial neoplasia), tile by tile with a per-tile class map, and says when "
        "an image is outside its domain (not H&E, not colorectal mucosa). With PathCLIP configured "
        "(PATHASST_PATHCLIP_WEIGHTS) it also classifies zero-shot over your own labels (e.g. ['tumour', 'stroma', "
        "'necrosis']) or the nine CRC-100K classes. Returns a probability per label and the top label. Use to "
        "answer 'what tissue / what lesion is this?', 'is this adenocarcinoma or a polyp?', or to check a region "
        "before measuring."
    )
    version: ClassVar[str] = "0.3.0"
    input_model: ClassVar[type[ToolInput]] = TissueClassificationInput
    headline_fields: ClassVar[tuple[str, ...]] = ("top_label", "top_probability", "n_tiles", "domain_warning")
    output_model: ClassVar[type[ToolOutput]] = TissueClassificationOutput
    working_mpp: ClassVar[float | None] = 0.5
    weights_setting: ClassVar[str] = "pathclip_weights"
    weights_suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".bin", ".safetensors")
    weights_kind: ClassVar[str] = "the PathCLIP open_clip checkpoint (pathclip-base.pt)"
    backend_name: ClassVar[str] = "pathclip"

    def shipped_weights(self) -> Path | None:
        return SHIPPED_TISSUE_WEIGHTS if SHIPPED_TISSUE_WEIGHTS.is_file() else None

    def not_configured_output(self, image: ImageData, args: ToolInput) -> ToolOutput:
        labels = args.label_set() if isinstance(args, TissueClassificationInput) else list(CRC100K_LABELS)
        return TissueClassificationOutput(
            status="not_configured", message=self.not_configured_message(), backend="none", labels=labels
        )

    #: settings field of the optional linear-probe head (not a required weight)
    probe_setting: ClassVar[str] = "tissue_probe_weights"

    def _load_backend(self, path: Path, fmt: WeightsFormat) -> None:
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

    def _analyze_embedded(self, image: ImageData, args: ToolInput) -> ToolResult:
        assert isinstance(args, TissueClassificationInput)
        net = shipped_tissue_net(self.settings)
        self.model_description = net.describe()
        labels = list(net.config.classes)
        notes = []
        if args.labels is not None or args.preset == "crc100k":
            asked = "free labels" if args.labels is not None else "the crc100k preset"
            notes.append(f"{asked} need PathCLIP (PATHASST_PATHCLIP_WEIGHTS, not configured); answered over the "
                         "embedded network's six EBHI-Seg classes")
        if image.mpp is None:
            image.notes.append(f"tissue_classification: mpp unknown, image analysed as if at the network's "
                               f"{net.config.mpp} um/px (EBHI-Seg's scale)")
        work = working_image(image, net.config.mpp)
        try:
            grid = tissue_tiles(work.pixels, net.config.tile_size, net.config.mpp)
        except ValueError as exc:
            raise ToolExecutionError(str(exc)) from exc
        if not grid.rects:
            out = TissueClassificationOutput(
                backend="tissue_net", labels=labels, head="embedded", n_tiles=0, prompt_template=None,
                message="; ".join([*notes, "no tissue found: nothing to classify"]))
            return ToolResult(output=out, overlay=caption(image.pixels, ["tissue: no tissue found"]))
        pred = net.classify(grid.crops(work.pixels))
        check = domain_check(net, work.pixels, pred.ood_distance, "colorectal mucosa biopsies (EBHI-Seg)")
        w = np.asarray(grid.tissue)
        probs = (pred.probabilities * w[:, None]).sum(0) / w.sum()
        top = int(np.argmax(probs))
        tops = pred.probabilities.argmax(1)
        if check.warning:
            notes.append(check.warning)
        if grid.n_tissue > len(grid.rects):
            image.notes.append(f"tissue_classification: {len(grid.rects)} of {grid.n_tissue} tissue tiles classified")
        out = TissueClassificationOutput(
            backend="tissue_net",
            message="; ".join(notes) or None,
            labels=labels,
            probabilities={lab: round(float(p), 6) for lab, p in zip(labels, probs)},
            top_label=labels[top],
            top_probability=round(float(probs[top]), 6),
            prompt_template=None,
            head="embedded",
            n_tiles=len(grid.rects),
            tile_counts={lab: int((tops == i).sum()) for i, lab in enumerate(labels)},
            in_domain=check.in_domain,
            out_of_domain_fraction=None if check.ood_fraction is None else round(check.ood_fraction, 4),
            domain_warning=check.warning,
        )
        overlay, features = _tile_map(image, work, grid.rects, pred.probabilities, labels)
        ranked = np.argsort(-probs)[:3]
        lines = ["tissue (embedded network)" + ("" if check.in_domain else ": OUT OF DOMAIN")]
        lines += [f"{labels[i]}: {probs[i]:.2f}" for i in ranked]
        return ToolResult(output=out, overlay=caption(overlay, lines), features=features)

    def summarize(self, output: ToolOutput) -> str:
        if (output.status == "ok" and isinstance(output, TissueClassificationOutput) and output.head == "embedded"
                and not output.probabilities):
            return f"{self.name}: no tissue found (nothing classified)"
        if output.status != "ok" or not isinstance(output, TissueClassificationOutput) or not output.probabilities:
            return super().summarize(output)
        ranked = sorted(output.probabilities.items(), key=lambda kv: -kv[1])[:3]
        body = ", ".join(f"{k} {v:.2f}" for k, v in ranked)
        text = f"{self.name} ({output.head}, {output.n_tiles} tile(s)): top {output.top_label} ({output.top_probability:.2f}); {body}"
        if output.domain_warning:
            text += f"; WARNING {output.domain_warning}"
        return text


def _tile_map(image: ImageData, work: ImageData, rects: list[tuple[int, int, int, int]], probs: np.ndarray,
              labels: list[str]) -> tuple[np.ndarray, list[dict]]:
    """The per-tile class map: the image tinted by each tile's top class, and one GeoJSON tile per tile."""
    h, w = image.shape
    k = work.scale / image.scale  # work-array pixels -> image-array pixels
    class_map = np.zeros((h, w), np.int32)
    features = []
    for (x0, y0, x1, y1), p in zip(rects, probs):
        j = int(np.argmax(p))
        a0, b0 = int(np.floor(x0 * k)), int(np.floor(y0 * k))
        a1, b1 = int(np.ceil(x1 * k)), int(np.ceil(y1 * k))
        class_map[b0:b1, a0:a1] = j + 1
        ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64) * k
        meas = {f"P({lab})": round(float(v), 4) for lab, v in zip(labels, p)}
        features.append(polygon_feature([ring], image, labels[j], "tile", meas))
    colors = {i + 1: EBHI_COLORS.get(lab, (255, 200, 0)) for i, lab in enumerate(labels)}
    return class_map_overlay(image.pixels, class_map, colors, alpha=0.25), features
