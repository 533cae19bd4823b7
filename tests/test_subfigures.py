"""Sub-figure (panel) detection (issue 29, item 4): the deterministic splitter on hand-made figures, the synthetic
data set's splits, the evaluation command, a one-epoch YOLO run, split-figure, and typed errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pathasst.core.case_model import CorruptImageError, ImageTooLargeError, UnsupportedFormatError
from pathasst.finetune.data import figure_cli
from pathasst.finetune.data.compound import build_subfig_dataset, read_boxes
from pathasst.finetune.data.subfigures import box_iou, match_boxes, split_figure, split_panels
from pathasst.finetune.data.synthetic_images import package_images, pick_font, render_chart, trim_background

Box = tuple[int, int, int, int]


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    """scikit-image's immunohistochemistry sample (512 x 512): real pathology pixels that ship with a package."""
    return next(p for p in package_images() if p.name == "skimage:ihc").load()


def _compose(panels: list[np.ndarray], rows: int, cols: int, gutter: int, margin: int, bg: tuple[int, int, int],
             letters: str = "") -> tuple[np.ndarray, list[Box]]:
    """Panels of equal size on a grid; letters drawn inside the top-left corners."""
    ph, pw = panels[0].shape[:2]
    w, h = 2 * margin + cols * pw + (cols - 1) * gutter, 2 * margin + rows * ph + (rows - 1) * gutter
    im = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(im)
    font = pick_font(np.random.default_rng(0), 22, bold=True)
    boxes = []
    for k, p in enumerate(panels):
        x, y = margin + (k % cols) * (pw + gutter), margin + (k // cols) * (ph + gutter)
        im.paste(Image.fromarray(p), (x, y))
        if letters:
            draw.rectangle((x + 4, y + 4, x + 26, y + 28), fill=(255, 255, 255))
            draw.text((x + 8, y + 4), letters[k], fill=(0, 0, 0), font=font)
        boxes.append((x, y, x + pw, y + ph))
    return np.asarray(im), boxes


def _assert_recovered(pred: list[Box], gold: list[Box], iou: float = 0.9) -> None:
    assert len(pred) == len(gold), (pred, gold)
    m = match_boxes(pred, gold, iou)
    assert len(m) == len(gold), [(p, g, round(box_iou(p, g), 3)) for p, g in zip(pred, gold)]


def test_box_matching_is_unique_and_hand_checked() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    gold = [(0, 0, 10, 10), (20, 0, 30, 10)]
    pred = [(0, 0, 10, 10), (1, 0, 11, 10), (20, 0, 30, 12)]  # two predictions on the first panel: one counts
    m = match_boxes(pred, gold)
    assert sorted((g, round(i, 3)) for _, g, i in m) == [(0, 1.0), (1, round(100 / 120, 3))]


def test_splitter_recovers_a_2x2_figure_with_white_gutters(ihc: np.ndarray) -> None:
    chart = np.asarray(Image.fromarray(trim_background(render_chart(np.random.default_rng(7), (260, 200), "bar")))
                       .resize((220, 180)))
    panels = [ihc[:180, :220], ihc[300:480, 250:470], chart, ihc[150:330, 100:320]]
    rgb, gold = _compose(panels, 2, 2, gutter=12, margin=10, bg=(255, 255, 255), letters="ABCD")
    _assert_recovered(split_panels(rgb), gold)


def test_splitter_recovers_a_1x3_figure_with_black_gutters(ihc: np.ndarray) -> None:
    panels = [ihc[:200, :150], ihc[200:400, 180:330], ihc[300:500, 350:500]]
    rgb, gold = _compose(panels, 1, 3, gutter=6, margin=0, bg=(0, 0, 0), letters="abc")
    pred = split_panels(rgb)
    _assert_recovered(pred, gold)
    assert pred == sorted(pred, key=lambda b: b[0])  # reading order


def test_splitter_cuts_abutting_panels_at_the_seam_but_not_an_inset(ihc: np.ndarray) -> None:
    rgb, gold = _compose([ihc[:240, :200], ihc[260:500, 300:500]], 1, 2, gutter=0, margin=8, bg=(255, 255, 255))
    _assert_recovered(split_panels(rgb), gold)
    single = ihc[:300, :300].copy()
    single[200:290, 200:290] = 255  # a white-bordered inset in the corner stays part of its panel
    single[203:287, 203:287] = ihc[400:484, 400:484]
    rgb, gold = _compose([single], 1, 1, gutter=0, margin=10, bg=(255, 255, 255))
    _assert_recovered(split_panels(rgb), gold)


def test_split_figure_writes_crops_and_boxes(ihc: np.ndarray, tmp_path: Path) -> None:
    rgb, gold = _compose([ihc[:180, :220], ihc[300:480, 250:470]], 1, 2, gutter=10, margin=5, bg=(255, 255, 255))
    path = tmp_path / "fig 1.png"
    Image.fromarray(rgb).save(path)
    assert figure_cli.main(["split-figure", str(path), "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "fig 1_panels.json").read_text())
    assert [tuple(p["box"]) for p in doc["panels"]] == gold
    crop = np.asarray(Image.open(tmp_path / "out" / doc["panels"][1]["file"]))
    assert np.array_equal(crop, rgb[gold[1][1] : gold[1][3], gold[1][0] : gold[1][2]])


def test_bad_figures_raise_typed_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "figure.png"
    text.write_text("<html>not an image</html>")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((50, 50, 3), 200, np.uint8)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])
    huge = tmp_path / "huge.png"
    Image.new("1", (12_000, 12_000)).save(huge)
    with pytest.raises(CorruptImageError, match="empty file"):
        split_panels(empty)
    with pytest.raises(UnsupportedFormatError, match="not a readable image"):
        split_figure(text, tmp_path / "o")
    with pytest.raises(CorruptImageError, match="corrupt or truncated"):
        split_panels(corrupt)
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        split_panels(huge)
    assert figure_cli.main(["split-figure", str(empty), "--out", str(tmp_path / "o")]) == 2


def test_subfig_dataset_keeps_tile_units_apart(shared_data: Path, tmp_path: Path) -> None:
    summary = build_subfig_dataset(tmp_path, shared_data, counts=(6, 3, 3), per_source=12)
    assert summary["figures"] == 12
    rows = read_boxes(tmp_path)
    units: dict[str, set[str]] = {}
    for r in rows:
        for u in r["meta"]["units"]:
            units.setdefault(u, set()).add(r["split"])
        label = (tmp_path / r["image"].replace("images/", "labels/")).with_suffix(".txt")
        assert len(label.read_text().splitlines()) == len(r["boxes"])
    assert {u: s for u, s in units.items() if len(s) > 1} == {}
    assert "train: images/train" in (tmp_path / "data.yaml").read_text()


def test_subfig_eval_prints_the_json_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_subfig_dataset(tmp_path, None, counts=(1, 1, 4))
    code = figure_cli.main(["subfig-eval", str(tmp_path), "--matplotlib", "2", "--bootstrap", "50"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    det = out["backends"]["deterministic"]
    for part in ("synthetic", "matplotlib"):
        for key in ("precision", "recall", "mean_iou", "precision_ci95", "recall_ci95", "figures", "panels"):
            assert key in det[part], (part, key)
    assert det["synthetic"]["figures"] == 4 and "per_layout" in det["synthetic"]
    assert "none available" in out["real_compound_figures"]


def test_yolo_trains_one_epoch_on_eight_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ultralytics", reason="the YOLO backend needs ultralytics")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo_cfg"))
    from pathasst.finetune.data.subfig_yolo import predict_yolo, train_yolo

    build_subfig_dataset(tmp_path / "ds", None, counts=(8, 2, 1))
    summary = train_yolo(tmp_path / "ds", tmp_path / "run", epochs=1, imgsz=128, batch=4)
    assert summary["exists"] and Path(summary["weights"]).stat().st_size > 1_000_000
    image = np.asarray(Image.open(tmp_path / "ds" / "images" / "test" / "test_00000.jpg").convert("RGB"))
    boxes = predict_yolo(summary["weights"], [image], imgsz=128, conf=0.001)[0]
    h, w = image.shape[:2]
    assert all(0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h for b in boxes)
