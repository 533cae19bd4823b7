"""Writing a case's outputs atomically: ``report.json``, ``report.md``, ``report.fhir.json``, overlay PNGs,
``annotations.geojson``.

Everything is written into a hidden temporary folder next to the final one and renamed into place in one step, so a
case folder in the output either holds a complete report or does not exist. A killed run loses nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from pathasst.agent.fhir import FHIR_FILE, diagnostic_report
from pathasst.core.files import TMP_PREFIX, atomic_write_text
from pathasst.planning.report import Report, render_markdown

__all__ = ["OutputLayout", "case_is_done", "clean_stale", "feature_collection", "write_case"]

def case_is_done(out_dir: Path, case_id: str) -> bool:
    return OutputLayout(Path(out_dir)).is_done(case_id)


def clean_stale(out_dir: Path) -> list[str]:
    """Remove temporary folders/files left by a killed run; return their names."""
    removed = []
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.name.startswith(TMP_PREFIX) or p.name.startswith(".old-"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p.name)
    return removed


def feature_collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features}


def _stem(name: str) -> str:
    return Path(name).with_suffix("").as_posix().replace("/", "__")


def _save_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(arr)).save(path, optimize=False)


@dataclass(frozen=True)
class OutputLayout:
    """Where everything lives in one output folder: the batch runner writes it (:func:`write_case`, failure records,
    ``summary.csv``) and the review app reads it; no other module spells these paths."""

    root: Path

    REPORT_JSON: ClassVar[str] = "report.json"  # written last: its presence marks a complete case
    REPORT_MD: ClassVar[str] = "report.md"
    ANNOTATIONS: ClassVar[str] = "annotations.geojson"
    STATE: ClassVar[str] = ".pathasst"  # run state: failure records, the review app's backups
    SUMMARY: ClassVar[str] = "summary.csv"

    def case_dir(self, case_id: str) -> Path:
        return Path(self.root) / case_id

    def report_json(self, case_id: str) -> Path:
        return self.case_dir(case_id) / self.REPORT_JSON

    def report_md(self, case_id: str) -> Path:
        return self.case_dir(case_id) / self.REPORT_MD

    def annotations(self, case_id: str) -> Path:
        return self.case_dir(case_id) / self.ANNOTATIONS

    @staticmethod
    def overlay_name(image: str, tool: str, call_id: str | None = None) -> str:
        """The overlay of ``tool`` on ``image``, relative to the case folder (``call_id`` tells apart a second call
        of one tool on one image)."""
        return f"overlays/{_stem(image or 'image')}__{tool}{f'__{call_id}' if call_id else ''}.png"

    def is_done(self, case_id: str) -> bool:
        return self.report_json(case_id).is_file()

    @property
    def summary_csv(self) -> Path:
        return Path(self.root) / self.SUMMARY

    @property
    def failed_dir(self) -> Path:
        return Path(self.root) / self.STATE / "failed"

    def failure_record(self, case_id: str) -> Path:
        return self.failed_dir / f"{case_id}.json"

    def failure_reason(self, case_id: str) -> str | None:
        """Why the last run of ``case_id`` failed (None when it did not fail; a placeholder when the record is
        unreadable)."""
        path = self.failure_record(case_id)
        if not path.is_file():
            return None
        try:
            return str(json.loads(path.read_text(encoding="utf-8")).get("reason", ""))
        except (OSError, ValueError, AttributeError):
            return "last run failed (unreadable failure record)"

    def write_failure(self, case_id: str, reason: str) -> None:
        atomic_write_text(self.failure_record(case_id), json.dumps({"case_id": case_id, "reason": reason}, indent=2))

    def review_backup_dir(self, case_id: str) -> Path:
        """Where the review app keeps a case's review files while a rerun replaces the case folder."""
        return Path(self.root) / self.STATE / "ui" / case_id


def _carry(src: Path, dest: Path) -> None:
    """Hard-link (else copy) ``src`` (a file or folder) to ``dest``: the files written here are never changed in
    place, only replaced, so a link is as safe as a copy."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir():
        shutil.copytree(src, dest, copy_function=link)
    elif src.is_file():
        link(str(src), str(dest))


def write_case(
    out_dir: Path, report: Report, artifacts: dict[str, Any], overwrite: bool = False, keep: tuple[str, ...] = ()
) -> Path:
    """Write one case's outputs atomically under ``out_dir/report.case_id``; return that folder.

    ``keep`` names entries of the folder being replaced (e.g. the review app's files) that the new folder carries
    over, inside the same atomic swap. Overlays are named by image and tool; a second call of one tool on one image
    gets its call id in the name, and ``files.overlay_of`` maps every call id to its overlay.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / report.case_id
    tmp = out_dir / f"{TMP_PREFIX}{report.case_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name in keep:
            if (final / name).exists():
                _carry(final / name, tmp / name)
        all_features: list[dict[str, Any]] = []
        per_image: dict[str, list[dict[str, Any]]] = {}
        overlays: list[str] = []
        overlay_of: dict[str, str] = {}
        for rec in report.trace:
            res = artifacts.get(rec.id)
            if res is None:
                continue
            if getattr(res, "overlay", None) is not None:
                name = OutputLayout.overlay_name(rec.image or "image", rec.tool)
                if name in overlays:
                    name = OutputLayout.overlay_name(rec.image or "image", rec.tool, rec.id)
                (tmp / name).parent.mkdir(exist_ok=True)
                _save_png(tmp / name, res.overlay)
                overlays.append(name)
                overlay_of[rec.id] = name
            for feat in getattr(res, "features", None) or []:
                f = {**feat, "properties": {**feat.get("properties", {}), "tool": rec.tool, "call_id": rec.id,
                                            "image": rec.image}}
                all_features.append(f)
                per_image.setdefault(rec.image or "image", []).append(f)
        report_dict = report.model_dump(mode="json")
        report_dict["files"] = {
            "overlays": overlays, "overlay_of": overlay_of, "annotations": OutputLayout.ANNOTATIONS, "fhir": FHIR_FILE
        }
        (tmp / OutputLayout.ANNOTATIONS).write_text(json.dumps(feature_collection(all_features)), encoding="utf-8")
        if len(per_image) > 1:
            (tmp / "annotations").mkdir()
            for img, feats in per_image.items():
                (tmp / "annotations" / f"{_stem(img)}.geojson").write_text(
                    json.dumps(feature_collection(feats)), encoding="utf-8"
                )
        markdown = render_markdown(report)
        (tmp / OutputLayout.REPORT_MD).write_text(markdown, encoding="utf-8")
        # the FHIR R4 DiagnosticReport embeds report.md as its presentedForm
        fhir_text = json.dumps(diagnostic_report(report, markdown), indent=2, allow_nan=False)
        (tmp / FHIR_FILE).write_text(fhir_text, encoding="utf-8")
        # report.json last: its presence marks a complete case
        with open(tmp / OutputLayout.REPORT_JSON, "w", encoding="utf-8") as f:
            json.dump(report_dict, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} exists (use --force to overwrite)")
            old = out_dir / f".old-{report.case_id}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
