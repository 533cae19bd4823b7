"""``pathasst tools predict``: one tool over every image of a folder, with per-image isolation and atomic writes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pathasst.agent.system import build_system
from pathasst.core.cases import PATCH_EXTENSIONS, CaseError
from pathasst.core.errors import ToolCallError
from pathasst.core.files import atomic_write_text
from pathasst.core.imaging import ImageData
from pathasst.core.readers import read_patch
from pathasst.core.regions import Region
from pathasst.core.settings import Settings
from pathasst.tools.base import call_tool

__all__ = ["predict_folder", "save_labels_png"]


def save_labels_png(path: Path, labels: np.ndarray) -> None:
    """Save an instance label map as a 16-bit PNG (0 = background), atomically."""
    labels = np.asarray(labels)
    if labels.size and int(labels.max()) > 65535:
        raise ValueError(f"{int(labels.max())} instances do not fit a 16-bit PNG")
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint16)).save(buf, format="PNG")
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def predict_folder(
    tool_name: str,
    input_dir: Path,
    out_dir: Path,
    settings: Settings,
    mpp: float | None = None,
    extra_args: dict[str, Any] | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """Run ``tool_name`` on every image in ``input_dir``; write ``STEM.json`` (+ ``STEM.png`` labels)."""
    tool = build_system(settings).registry.get(tool_name)
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in PATCH_EXTENSIONS)
    done, failed = 0, []
    for path in files:
        try:
            image = read_patch(path, settings.max_image_pixels, mpp=mpp or settings.default_mpp)
        except CaseError as exc:
            failed.append((path.name, f"{type(exc).__name__}: {exc}"))
            continue

        def resolver(name: str, region: Region | None, working_mpp: float | None, _img: ImageData = image) -> ImageData:
            if name != _img.name:
                raise ToolCallError(f"unknown image {name!r}")
            return _img

        record, result = call_tool(tool, {**(extra_args or {}), "image": image.name}, resolver)
        if result is None:
            failed.append((path.name, record.error or record.summary))
            continue
        atomic_write_text(out_dir / f"{path.stem}.json", json.dumps(record.output, indent=2))
        if tool.segmentation and result.labels is not None:
            save_labels_png(out_dir / f"{path.stem}.png", result.labels)
        done += 1
    return done, failed
