"""The fixed splits of the shared training data: by case / slide, disjoint, stable, and read the same by everyone."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pathasst.tools.datasets import AMIBR_SPLIT_FILE, EBHI_SPLIT_FILE, amibr_items, amibr_split, ebhi_items, ebhi_split


def test_split_files_are_disjoint_lists() -> None:
    for path in (EBHI_SPLIT_FILE, AMIBR_SPLIT_FILE):
        data = json.loads(path.read_text())
        held, val = set(data["held_out"]), set(data["validation"])
        assert held and val and not held & val, path.name
        assert data["unit"] and data["method"]
    assert ebhi_split("no-such-case") == "train"  # unknown units are training units of nobody's model: not held out
    assert amibr_split("MIDOG21/no-such.tiff") == "train"


@pytest.mark.data
def test_ebhi_split_is_by_case_and_covers_every_class(shared_data: Path) -> None:
    items = ebhi_items(shared_data / "ebhi_seg")
    assert len(items) == 1842
    by_case: dict[str, set[str]] = {}
    for it in items:
        by_case.setdefault(it.case, set()).add(it.split)
        assert it.image.is_file() and (it.mask is None or it.mask.is_file())
    assert all(len(s) == 1 for s in by_case.values()), "a case straddles two splits"
    counts = Counter(it.split for it in items)
    assert counts == {"train": 1210, "validation": 263, "held_out": 369}
    held_classes = Counter(it.label for it in items if it.split == "held_out")
    assert set(held_classes) == {"Normal", "Polyp", "Low-grade IN", "High-grade IN", "Adenocarcinoma", "Serrated adenoma"}
    assert sum(it.mask is None for it in items) == 2
    assert [it.name for it in ebhi_items(shared_data / "ebhi_seg", ("held_out",))] == \
        [it.name for it in items if it.split == "held_out"]


@pytest.mark.data
def test_amibr_split_is_by_slide_and_lists_the_other_figures_in_each_crop(shared_data: Path) -> None:
    items = amibr_items(shared_data / "mitosis_amibr")
    assert len(items) == 3720 and sum(it.atypical for it in items) == 832
    by_slide: dict[str, set[str]] = {}
    for it in items:
        by_slide.setdefault(it.slide, set()).add(it.split)
    assert all(len(s) == 1 for s in by_slide.values())
    assert Counter(it.split for it in items) == {"train": 2024, "validation": 859, "held_out": 837}
    with_others = [it for it in items if it.others]
    assert len(with_others) == 89
    assert all(abs(dx) < 64 and abs(dy) < 64 and (dx, dy) != (0, 0) for it in with_others for dx, dy, _ in it.others)


def test_missing_layouts_fail_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="labels.csv not found"):
        ebhi_items(tmp_path)
    (tmp_path / "labels.csv").write_text("image,label\nA/x,Normal\n")
    with pytest.raises(FileNotFoundError, match="lacks the columns \\['case'\\]"):
        ebhi_items(tmp_path)
    with pytest.raises(FileNotFoundError, match="AMI-BR.csv not found"):
        amibr_items(tmp_path)
