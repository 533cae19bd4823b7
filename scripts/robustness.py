"""Robustness of the embedded tools to perturbed inputs, on the held-out cases / slides (model-card figures).

    .venv/bin/python scripts/robustness.py tissue  --data ../shared/data/ebhi_seg      [--every 2]
    .venv/bin/python scripts/robustness.py mitosis --data ../shared/data/mitosis_amibr
    .venv/bin/python scripts/robustness.py nuclei-20x --data ../shared/data/consep_train [--every 2]
    .venv/bin/python scripts/robustness.py ihc --data ../shared/data/deepliif_ki67
    .venv/bin/python scripts/robustness.py slide --data ../shared/data/bisque_breast

Each perturbation is applied to copies of the held-out images written in the dataset's layout to a temporary folder,
and the same evaluator as ``pathasst tools eval`` scores them (mpp not given, as a user without it would run them;
mitosis crops at 0.25 um/px). Perturbations: haematoxylin and eosin optical density scaled by 0.7 / 1.3 (colour
deconvolution and back), Gaussian blur (sigma 1 px), JPEG quality 40, and a rescale by 0.8 / 1.25 that the tool is
not told about (the masks follow). Prints one JSON line per setting.

``nuclei-20x`` scores the held-out CoNSeP tiles scanned down to 20x (0.5 um/px, labels alike) under each
perturbation, for the 20x slide network (float32 and its int8 model) and the patch ensemble (told 0.5 um/px, so it resamples to 0.25 and back):
mean object F1 and AJI over the tiles.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pathasst.core.settings import Settings

_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED[2] = np.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def stain(rgb: np.ndarray, h: float = 1.0, e: float = 1.0) -> np.ndarray:
    od = -np.log(np.clip(rgb.astype(float) / 255.0, 1 / 255, 1))
    c = od.reshape(-1, 3) @ _HED_FROM_RGB
    c[:, 0] *= h
    c[:, 1] *= e
    return np.clip(np.exp(-(c @ _RGB_FROM_HED)).reshape(rgb.shape) * 255 + 0.5, 0, 255).astype(np.uint8)


def blur(rgb: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    from scipy import ndimage as ndi

    return np.clip(ndi.gaussian_filter(rgb.astype(float), (sigma, sigma, 0)) + 0.5, 0, 255).astype(np.uint8)


def jpeg(rgb: np.ndarray, quality: int = 40) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def scale(rgb: np.ndarray, f: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((round(w * f), round(h * f)), Image.BILINEAR))


SETTINGS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "none": (lambda x: x, 1.0),
    "haematoxylin x0.7": (lambda x: stain(x, h=0.7), 1.0),
    "haematoxylin x1.3": (lambda x: stain(x, h=1.3), 1.0),
    "eosin x0.7": (lambda x: stain(x, e=0.7), 1.0),
    "eosin x1.3": (lambda x: stain(x, e=1.3), 1.0),
    "blur sigma 1 px": (blur, 1.0),
    "JPEG q40": (jpeg, 1.0),
    "rescaled x0.8, not told": (lambda x: scale(x, 0.8), 0.8),
    "rescaled x1.25, not told": (lambda x: scale(x, 1.25), 1.25),
}


def _save(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path.with_suffix(".png"))


def tissue(data: Path, every: int) -> None:
    from pathasst.tools.datasets import ebhi_items
    from pathasst.tools.evaluate_tissue import evaluate_tissue_classification, evaluate_tumor_segmentation
    from pathasst.tools.registry import default_registry

    settings = Settings(_env_file=None)
    reg = default_registry(settings)
    items = ebhi_items(data, ("held_out",))[::every]
    for name, (fn, f) in SETTINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            rows = ["image,label,case,has_mask"]
            for it in items:
                _save(fn(np.asarray(Image.open(it.image).convert("RGB"))), root / "images" / it.name)
                if it.mask is not None:
                    m = np.asarray(Image.open(it.mask).convert("L"))
                    if f != 1.0:
                        m = np.asarray(Image.fromarray(m).resize((round(m.shape[1] * f), round(m.shape[0] * f)), Image.NEAREST))
                    _save(m, root / "masks" / it.name)
                rows.append(f"{it.name},{it.label},{it.case},{it.mask is not None}")
            (root / "labels.csv").write_text("\n".join(rows) + "\n")
            c = evaluate_tissue_classification(reg.get("tissue_classification"), root, settings)
            s = evaluate_tumor_segmentation(reg.get("tumor_segmentation"), root, settings)
        print(json.dumps({"setting": name, "n": c["n_images"], "balanced_accuracy": round(c["balanced_accuracy"], 4),
                          "macro_f1": round(c["macro_f1"], 4), "flagged_out_of_domain": round(c["flagged_out_of_domain"], 4),
                          "dice": round(s["dice"], 4)}), flush=True)


def mitosis(data: Path, every: int) -> None:
    from pathasst.tools.datasets import amibr_items
    from pathasst.tools.evaluate_mitosis import evaluate_mitosis
    from pathasst.tools.registry import default_registry

    settings = Settings(_env_file=None)
    tool = default_registry(settings).get("mitosis_detection")
    items = amibr_items(data, ("held_out",))  # all of them: a crop's other figures are rows of the same slides
    header = (data / "AMI-BR.csv").read_text().splitlines()[0]
    lines = {f"{r.split(',')[2]}_{r.split(',')[3]}": r for r in (data / "AMI-BR.csv").read_text().splitlines()[1:]}
    for name, (fn, f) in SETTINGS.items():
        if f != 1.0:
            continue  # the crops' figure coordinates are defined at 40x; rescaling is covered by the tissue run
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for it in items:
                folder = "atypical" if it.atypical else "normal"
                out = root / folder / f"{it.name}.jpg"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(fn(np.asarray(Image.open(it.image).convert("RGB")))).save(out, quality=98)
            (root / "AMI-BR.csv").write_text(header + "\n" + "\n".join(lines[it.name] for it in items) + "\n")
            m = evaluate_mitosis(tool, root, settings, mpp=0.25)
        print(json.dumps({"setting": name, "n": m["n_crops"], "recall": round(m["recall"], 4),
                          "fp_per_crop": round(m["fp_per_crop"], 4),
                          "atypical_balanced_accuracy": m["atypical_balanced_accuracy"]}), flush=True)


def ihc(data: Path, every: int) -> None:
    """Ki-67 index error per DeepLIIF image with the shipped threshold (not leave-one-out; the haematoxylin and DAB
    sweep is ``pathasst tools eval ihc_quantification``'s); rescaled images keep the stated 0.25 um/px."""
    from pathasst.tools.evaluate import DEEPLIIF_MPP, ihc_ground_truth
    from pathasst.tools.evaluate_ihc import _index, _read
    from pathasst.tools.registry import default_registry

    tool = default_registry(Settings(_env_file=None)).get("ihc_quantification")
    tool.load()
    threshold = float(tool.input_model(image="x").dab_fraction_threshold)
    images = sorted(data.glob("*_ihc.png"))[::every]
    for name, (fn, _) in SETTINGS.items():
        if name.startswith("eosin"):
            continue  # an immunostain has no eosin
        errors = {}
        for path in images:
            truth = ihc_ground_truth(np.asarray(Image.open(str(path).replace("_ihc", "_groundtruth")).convert("RGB")))
            _, fraction = _read(tool, fn(np.asarray(Image.open(path).convert("RGB"))), DEEPLIIF_MPP)
            errors[path.name[: -len("_ihc.png")]] = round(abs(_index(fraction > threshold) - _index(truth[1])), 2)
        print(json.dumps({"setting": name, "threshold": threshold, "abs_index_error": errors}), flush=True)


def nuclei_20x(data: Path, every: int) -> None:
    from pathasst.core.imaging import ImageData
    from pathasst.finetune.nuclei_pixel import held_out_tiles
    from pathasst.tools.backends.nuclei_net import SHIPPED_NET_WEIGHTS, SLIDE_NET_WEIGHTS, NucleiNet
    from pathasst.tools.evaluate import _read, _read_rgb, rescale_tile
    from pathasst.tools.metrics import aji_counts, object_f1

    settings = Settings(_env_file=None)
    nets = {"slide_20x": NucleiNet.load(SLIDE_NET_WEIGHTS, "slide", settings),
            "slide_20x_int8": NucleiNet.load(SLIDE_NET_WEIGHTS, "slide", settings, int8=True),
            "ensemble": NucleiNet.load(SHIPPED_NET_WEIGHTS, "ensemble", settings)}
    tiles = [rescale_tile(_read_rgb(data / "images" / f"{n}.jpg"), _read(data / "instances" / f"{n}.png"), 0.5)
             for n in held_out_tiles(data, every)]
    for name, (fn, f) in SETTINGS.items():
        row: dict[str, object] = {"setting": name, "n": len(tiles)}
        for key, net in nets.items():
            f1, aji = [], []
            for rgb, lab in tiles:
                true = lab if f == 1.0 else np.asarray(Image.fromarray(lab.astype(np.int32)).resize(
                    (round(lab.shape[1] * f), round(lab.shape[0] * f)), Image.NEAREST))
                pred = net.segment(ImageData(pixels=fn(rgb), mpp=0.5)).labels
                f1.append(object_f1(true, pred)["f1"])
                inter, union = aji_counts(true, pred)
                aji.append(inter / union if union else 1.0)
            row[key] = {"f1": round(float(np.mean(f1)), 4), "aji": round(float(np.mean(aji)), 4)}
        print(json.dumps(row), flush=True)


def slide(data: Path, every: int) -> None:
    """The slide head's cross-validated figures (each image by the fold ensemble that never saw its TMA group, as
    ``tools eval slide_classification --held-out``) on perturbed copies of the 40 images."""
    from pathasst.tools.evaluate_slide import evaluate_slide_classification
    from pathasst.tools.registry import default_registry

    settings = Settings(_env_file=None)
    tool = default_registry(settings).get("slide_classification")
    labels = (data / "labels.csv").read_text()
    for name, (fn, _) in SETTINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for path in sorted((data / "images").iterdir()):
                _save(fn(np.asarray(Image.open(path).convert("RGB"))), root / "images" / path.stem)
            (root / "labels.csv").write_text(labels)
            m = evaluate_slide_classification(tool, root, settings, held_out=True)
        print(json.dumps({"setting": name, "n": m["n_images"], "auc": round(m["auc"], 4),
                          "accuracy": round(m["accuracy"], 4)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["tissue", "mitosis", "nuclei-20x", "ihc", "slide"])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--every", type=int, default=1, help="use every N-th held-out item")
    a = p.parse_args(argv)
    {"tissue": tissue, "mitosis": mitosis, "nuclei-20x": nuclei_20x, "ihc": ihc, "slide": slide}[a.what](a.data, a.every)


if __name__ == "__main__":
    sys.exit(main())
