"""The project's own nuclei network: checkpoint format and loading, tiling, post-processing, errors, a short real
training run, and (with ../shared/data and the shipped weights) held-out accuracy against the classical method."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tool_helpers import make_resolver

from pathasst.core.errors import WeightsError
from pathasst.core.imaging import ImageData, fill_holes, open_disk
from pathasst.tools.backends.nuclei_net import ARCHITECTURE, NucleiNet, NucleiNetConfig, build_nuclei_net
from pathasst.tools.backends.nuclei_post import hover_instances, instance_types
from pathasst.tools.base import call_tool

TINY_WIDTHS = [4, 8, 16]


def _tiny(tmp_path: Path, name: str = "tiny.pt", seed: int = 0, **cfg: Any) -> Path:
    from pathasst.finetune.nuclei_net import save_checkpoint

    torch.manual_seed(seed)
    config = NucleiNetConfig(widths=TINY_WIDTHS, tile_size=64, overlap=16, **cfg)
    model = build_nuclei_net(config.widths, 1 + len(config.type_classes))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode differs from identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(tmp_path / name, model, config)


def _tiny_ensemble(tmp_path: Path) -> Path:
    from pathasst.finetune.nuclei_net import combine_checkpoints

    out = tmp_path / "tiny_ensemble.pt"
    combine_checkpoints([_tiny(tmp_path, "m1.pt", seed=1), _tiny(tmp_path, "m2.pt", seed=2)], out)
    return out


def _he_image(h: int, w: int, mpp: float | None = 0.25, seed: int = 0) -> ImageData:
    """A crop of scikit-image's IHC sample restained as H&E (its DAB drawn as eosin), so it reads as H&E."""
    from skimage import data
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(data.immunohistochemistry())
    hed[..., 1], hed[..., 2] = hed[..., 2] * 0.6, 0.0
    rgb = (np.clip(hed2rgb(hed), 0, 1) * 255).astype(np.uint8)
    y, x = np.random.default_rng(seed).integers(0, 512 - h + 1), np.random.default_rng(seed + 1).integers(0, 512 - w + 1)
    return ImageData(np.ascontiguousarray(rgb[y : y + h, x : x + w]), name="img.png", mpp=mpp)


def test_checkpoint_loads_through_the_nuclei_backend_and_is_fp16_on_disk(settings: Any, tmp_path: Path) -> None:
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend

    path = _tiny(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["architecture"] == ARCHITECTURE and raw["config"]["mpp"] == 0.25
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values() if v.is_floating_point())
    net = load_nuclei_backend(path, settings.model_copy(update={"torch_threads": 1}))
    assert isinstance(net, NucleiNet)
    assert net.config.widths == TINY_WIDTHS and net.config.type_classes == ["Other", "Inflammatory", "Epithelial", "Spindle"]
    assert net.describe().startswith(f"{ARCHITECTURE} (")
    image = _he_image(100, 120)
    pred = net.segment(image)
    assert pred.labels.shape == (100, 120) and pred.labels.dtype == np.uint32
    ids = np.unique(pred.labels)
    assert np.array_equal(ids, np.arange(len(ids)))  # 0 and contiguous 1..N
    assert set(pred.types) <= set(ids[1:].tolist()) and set(pred.types.values()) <= {1, 2, 3, 4}
    assert np.array_equal(net.segment(image).labels, pred.labels)  # deterministic
    # sidecar config: a plain state dict + NAME.json loads the same network
    plain = tmp_path / "plain.pt"
    torch.save(raw["state_dict"], plain)
    plain.with_suffix(".json").write_text(json.dumps(raw["config"]))
    net2 = load_nuclei_backend(plain, settings)
    assert np.array_equal(net2.segment(image).labels, pred.labels)


def test_single_tile_equals_the_plain_forward_pass_and_tiles_cover_large_images(tmp_path: Path) -> None:
    net = NucleiNet.load(_tiny(tmp_path), "nuclei_weights")
    rgb = _he_image(60, 48).pixels  # fits in one 64 px tile (sides multiples of 4: no padding): the network's own output
    maps = net.maps(rgb)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        out = net.model(x)
    np.testing.assert_allclose(maps[0], torch.softmax(out[0, :2], 0)[1].numpy(), atol=1e-5)
    np.testing.assert_allclose(maps[1:3], out[0, 2:4].numpy(), atol=1e-5)
    np.testing.assert_allclose(maps[3:], torch.softmax(out[0, 4:], 0).numpy(), atol=1e-5)
    # a larger image: 64 px tiles overlapping by 32, blended; close to one pass over the whole image (they differ
    # only near tile borders, where the tiles see less context) and a valid probability map everywhere
    big = _he_image(200, 232, seed=3).pixels
    tiled = net.maps(big, tile=64, overlap=32)
    single = net.maps(big, tile=256, overlap=0)  # the whole image in one pass
    assert tiled.shape == single.shape == (8, 200, 232)
    assert np.all((tiled[0] >= 0) & (tiled[0] <= 1)) and np.allclose(tiled[3:].sum(0), 1, atol=1e-4)
    assert np.corrcoef(tiled[0].ravel(), single[0].ravel())[0, 1] > 0.95


def test_hover_post_processing_splits_touching_nuclei_and_votes_types() -> None:
    from pathasst.finetune.nuclei_data import hv_map

    true = np.zeros((64, 96), np.int32)
    yy, xx = np.mgrid[:64, :96]
    true[(yy - 32) ** 2 + (xx - 30) ** 2 < 14**2] = 1
    true[(yy - 32) ** 2 + (xx - 55) ** 2 < 13**2] = 2  # overlaps the first: one touching blob
    fg = (true > 0).astype(np.float32)
    labels = hover_instances(fg, hv_map(true))
    assert labels.max() == 2
    for k in (1, 2):
        inter = np.logical_and(labels == labels[32, 30 if k == 1 else 58], true == k).sum()
        assert inter / (true == k).sum() > 0.85
    tp = np.zeros((5, 64, 96), np.float32)
    tp[3][true == 1] = 1.0  # epithelial
    tp[2][true == 2] = 1.0  # inflammatory
    tp[0][true == 0] = 1.0
    types = instance_types(labels, tp)
    assert types[labels[32, 30]] == 3 and types[labels[32, 58]] == 2


def test_the_fast_hole_filling_and_opening_give_scipys_masks_exactly() -> None:
    from scipy import ndimage as ndi
    from skimage.morphology import disk

    rng = np.random.default_rng(3)
    holes = 0
    for _ in range(120):
        shape = tuple(int(v) for v in rng.integers(1, 70, 2))
        m = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3.0)) > rng.uniform(0.3, 0.7)
        filled = fill_holes(m)
        assert np.array_equal(filled, ndi.binary_fill_holes(m))
        for r in (1, 2):
            assert np.array_equal(open_disk(m, r), ndi.binary_opening(m, structure=disk(r)))
        holes += int(filled.sum() - m.sum())
    assert holes > 100  # the masks had holes to fill
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring)[4, 4] and not fill_holes(np.pad(ring[:, 4:], ((0, 0), (0, 0))))[4, 0]


def test_absolute_edge_mode_splits_by_a_fixed_threshold_on_sparse_and_dense_images() -> None:
    """``edge_mode="absolute"``: the unnormalised HV gradient; a fixed threshold splits touching nuclei whether the
    image holds one pair or a crowd, and a threshold above every gradient merges them (so the split is the mode's)."""
    from dataclasses import replace

    from pathasst.finetune.nuclei_data import hv_map
    from pathasst.tools.backends.nuclei_post import PostParams

    yy, xx = np.mgrid[:64, :96]
    pair = np.zeros((64, 96), np.int32)
    pair[(yy - 32) ** 2 + (xx - 30) ** 2 < 12**2] = 1
    pair[(yy - 32) ** 2 + (xx - 53) ** 2 < 12**2] = 2
    crowd = np.zeros((128, 192), np.int32)  # 24 touching nuclei in a grid
    k = 0
    for cy in range(16, 128, 22):
        for cx in range(16, 192, 22):
            k += 1
            crowd[((np.mgrid[:128, :192][0] - cy) ** 2 + (np.mgrid[:128, :192][1] - cx) ** 2) < 12**2] = k
    post = PostParams(np_threshold=0.5, hv_sigma=1.0, grad_threshold=0.25, min_area_px=20, edge_mode="absolute")
    for true in (pair, crowd):
        n_true = len(np.unique(true)) - 1
        labels = hover_instances((true > 0).astype(np.float32), hv_map(true), post)
        assert labels.max() == n_true, (labels.max(), n_true)
        merged = hover_instances((true > 0).astype(np.float32), hv_map(true), replace(post, grad_threshold=1e3))
        assert merged.max() < n_true


def test_unmarked_components_are_kept_as_nuclei_only_when_asked_and_large_enough() -> None:
    """A thin nucleus loses its marker to the marker opening, so the watershed drops it; ``unmarked_min_px`` keeps
    such a component (if big enough) as one more nucleus and leaves the marked ones untouched."""
    from dataclasses import replace

    from pathasst.finetune.nuclei_data import hv_map
    from pathasst.tools.backends.nuclei_post import PostParams

    true = np.zeros((64, 96), np.int32)
    yy, xx = np.mgrid[:64, :96]
    true[(yy - 32) ** 2 + (xx - 30) ** 2 < 12**2] = 1  # a round nucleus: marked
    true[10:13, 55:85] = 2  # 3 x 30 = 90 px, too thin for a marker
    true[50:53, 60:70] = 3  # 3 x 10 = 30 px: smaller than the rescue size
    post = PostParams(np_threshold=0.5, hv_sigma=1.0, grad_threshold=0.25, min_area_px=20, edge_mode="absolute")
    fg = (true > 0).astype(np.float32)
    plain = hover_instances(fg, hv_map(true), post)
    assert plain.max() == 1 and (plain[true == 2] == 0).all()
    kept = hover_instances(fg, hv_map(true), replace(post, unmarked_min_px=40))
    assert kept.max() == 2
    assert np.array_equal(kept == kept[32, 30], plain == plain[32, 30])  # the marked nucleus is unchanged
    strip = kept[true == 2]
    assert (strip == strip[0]).all() and strip[0] not in (0, kept[32, 30])
    assert (kept[true == 3] == 0).all()
    assert hover_instances(fg, hv_map(true), replace(post, unmarked_min_px=20)).max() == 3


def test_wrong_or_corrupt_files_fail_naming_the_setting(settings: Any, tmp_path: Path) -> None:
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend
    from pathasst.tools.nuclei_segmentation import NucleiSegmentationTool

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    wrong_shape = tmp_path / "wrong.pt"
    raw = torch.load(_tiny(tmp_path), weights_only=True)
    raw["config"]["widths"] = [8, 16, 32]  # does not fit the stored tensors
    torch.save(raw, wrong_shape)
    bad_post = tmp_path / "badpost.pt"
    raw["config"] = {**raw["config"], "widths": TINY_WIDTHS, "post": {"bogus": 1}}
    torch.save(raw, bad_post)
    bad_mode = tmp_path / "badmode.pt"
    raw["config"] = {**raw["config"], "post": {"edge_mode": "sideways"}}
    torch.save(raw, bad_mode)
    negative = tmp_path / "negative.pt"
    raw["config"] = {**raw["config"], "post": {"unmarked_min_px": -5}}
    torch.save(raw, negative)
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(3)}, plain)
    cases = {corrupt: "not a torch checkpoint", wrong_shape: "do not fit", bad_post: "unknown 'post' keys",
             bad_mode: "'edge_mode' must be one of", negative: "['unmarked_min_px'] must be >= 0",
             plain: "pathasst-nuclei-net"}
    for path, words in cases.items():
        with pytest.raises(WeightsError) as info:
            load_nuclei_backend(path, settings)
        assert "PATHASST_NUCLEI_WEIGHTS" in str(info.value) and words in str(info.value), str(info.value)
        tool = NucleiSegmentationTool(settings.model_copy(update={"nuclei_weights": path}))
        record, _ = call_tool(tool, {"image": "img.png"}, make_resolver({"img.png": _he_image(64, 64)}))
        assert record.status == "failed" and "PATHASST_NUCLEI_WEIGHTS" in record.error, record.error


def _vote_case() -> tuple[list[np.ndarray], dict[str, tuple[slice, slice]]]:
    """Three label maps of one 40 x 60 image: the first (an ensemble's average) merges the touching nuclei A and B
    into one object and finds D; the second splits A and B and alone finds C; the third splits A (one column wider)
    and B and finds D."""
    boxes = {"A": (slice(5, 15), slice(5, 15)), "B": (slice(5, 15), slice(15, 25)), "AB": (slice(4, 16), slice(5, 25)),
             "C": (slice(25, 32), slice(40, 48)), "D": (slice(25, 33), slice(5, 13))}
    avg, one, two = (np.zeros((40, 60), np.int32) for _ in range(3))
    avg[boxes["AB"]], avg[boxes["D"]] = 7, 3
    one[boxes["A"]], one[boxes["B"]], one[boxes["C"]] = 1, 2, 5
    two[5:15, 6:16], two[5:15, 16:25], two[boxes["D"]] = 4, 9, 2
    return [avg, one, two], boxes


def test_member_vote_keeps_the_nuclei_most_predictions_agree_on_and_splits_what_the_average_merged() -> None:
    """vote_instances by hand: with 2 of 3, A and B (split by two maps, merged by the average: IoU 0.42 with each)
    come out split, the average's merged object and C (one map) go, D (two maps) stays; a pixel two kept nuclei
    claim equally (column 15: B in the second map, A in the third) goes to the earlier map's; with 1 of 3 the merged
    object wins its pixels (it has all its votes there); with 3 of 3 nothing is left."""
    from pathasst.tools.backends.nuclei_post import vote_instances

    maps, boxes = _vote_case()
    out = vote_instances(maps, 2)
    assert out.dtype == np.int32 and sorted(np.unique(out)) == [0, 1, 2, 3]

    def mask(name: str) -> np.ndarray:
        m = np.zeros(out.shape, bool)
        m[boxes[name]] = True
        return m

    for name in ("A", "B", "D"):
        ids = np.unique(out[mask(name)])
        assert len(ids) == 1 and ids[0] > 0 and np.array_equal(out == ids[0], mask(name)), name
    assert not out[mask("C")].any() and not out[4].any() and not out[15].any()  # C and the merged rows gone
    loose = vote_instances(maps, 1)
    assert len(np.unique(loose)) - 1 == 3  # AB (merged), C, D
    assert len(np.unique(loose[mask("AB")])) == 1 and (loose[mask("AB")] > 0).all()
    assert vote_instances(maps, 3).max() == 0
    assert vote_instances(maps, 2, min_area_px=65).max() == 2  # D (64 px) dropped
    assert sorted(np.unique(vote_instances([maps[1]], 1))) == [0, 1, 2, 3]  # one map: itself, relabelled 1..N
    gappy = [np.where(m > 0, m.astype(np.int64) * 1_000_003 + 2**40, 0) for m in maps]  # ids need not be contiguous
    assert np.array_equal(vote_instances(gappy, 2), out)
    assert vote_instances([np.zeros((5, 5), np.int32)] * 3, 2).shape == (5, 5)
    with pytest.raises(ValueError, match="differ in shape"):
        vote_instances([maps[0], maps[1][:, :50]], 2)
    with pytest.raises(ValueError, match="at least one label map"):
        vote_instances([], 2)


def test_an_ensemble_voting_on_its_members_returns_their_maps_in_both_runtimes_and_the_search_tries_it(
        settings: Any, tmp_path: Path) -> None:
    """post.member_vote on an ensemble: maps gain each member's own P(nucleus), H, V (equal to the member's maps
    loaded alone), in torch and in ONNX Runtime, and segment() post-processes all of them; without the members'
    maps the vote is a clear error; an impossible member_vote is refused naming the setting; tune_post tries the
    vote on ensemble maps and picks it where the average merges touching nuclei that the members split."""
    from dataclasses import replace

    from pathasst.finetune.nuclei_data import Sample, hv_map
    from pathasst.finetune.nuclei_eval import score_maps, tune_post
    from pathasst.tools.backends.nuclei_post import PostParams, instances_from_maps
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend

    ens = _tiny_ensemble(tmp_path)
    raw = torch.load(ens, weights_only=True)
    post = {"np_threshold": 0.45, "min_area_px": 4, "min_marker_px": 2, "member_vote": 2}
    raw["config"]["post"] = post
    voting = tmp_path / "voting.pt"
    torch.save(raw, voting)
    one = settings.model_copy(update={"torch_threads": 1})
    rgb = _he_image(100, 120).pixels
    nets = {rt: load_nuclei_backend(voting, one.model_copy(update={"nuclei_runtime": rt}))
            for rt in ("torch", "onnxruntime")}
    members = [load_nuclei_backend(tmp_path / f"m{k}.pt", one.model_copy(update={"nuclei_runtime": "torch"}))
               for k in (1, 2)]
    own = [m.maps(rgb)[:3] for m in members]
    for rt, net in nets.items():
        assert net.runtime == rt and net.n_member_maps == 2 and "ensemble of 2" in net.describe()
        assert ", nuclei voted 2 of 3" in net.describe()  # reports name the post-processing
        mp = net.maps(rgb)
        assert mp.shape == (8 + 6, 100, 120), mp.shape
        np.testing.assert_allclose(mp[:3], np.mean(own, 0), atol=1e-4)
        np.testing.assert_allclose(mp[8:11], own[0], atol=1e-4)
        np.testing.assert_allclose(mp[11:14], own[1], atol=1e-4)
        assert np.abs(own[0] - own[1]).max() > 1e-2  # the members really differ
        assert np.array_equal(net.segment_array(rgb).labels, instances_from_maps(mp, net.config.post, 5))
    net = nets["torch"]
    net.keep_member_maps(False)
    assert net.maps(rgb).shape[0] == 8
    with pytest.raises(ValueError, match="needs the members' own maps"):
        net.segment_array(rgb)
    assert net.segment_array(rgb, replace(net.config.post, member_vote=0)).labels.shape == (100, 120)
    with pytest.raises(ValueError, match="need an ensemble"):
        members[0].keep_member_maps()
    raw["config"]["post"] = {**post, "member_vote": 4}
    torch.save(raw, tmp_path / "bad_vote.pt")
    with pytest.raises(WeightsError, match=r"PATHASST_NUCLEI_WEIGHTS.*" + re.escape("'member_vote' 4 is impossible "
                                                                                   "for an ensemble of 2 (1..3)")):
        load_nuclei_backend(tmp_path / "bad_vote.pt", settings)
    single = torch.load(tmp_path / "m1.pt", weights_only=True)
    single["config"]["post"] = {"member_vote": 2}
    torch.save(single, tmp_path / "single_vote.pt")
    with pytest.raises(WeightsError, match="impossible for a single network; 0 turns the vote off"):
        load_nuclei_backend(tmp_path / "single_vote.pt", settings)

    # the search: two touching nuclei the average merges (flat HV) and both members split (true HV)
    true = np.zeros((64, 96), np.int32)
    yy, xx = np.mgrid[:64, :96]
    true[(yy - 32) ** 2 + (xx - 30) ** 2 < 14**2] = 1
    true[(yy - 32) ** 2 + (xx - 55) ** 2 < 13**2] = 2
    fg = (true > 0).astype(np.float32)[None]
    types = np.zeros((5, 64, 96), np.float32)
    member = np.concatenate([fg, hv_map(true)])
    maps = [np.concatenate([fg, np.zeros((2, 64, 96), np.float32), types, member, member])]
    samples = [Sample("t", np.zeros((64, 96, 3), np.uint8), true, hv_map(true), np.zeros((64, 96), np.int64))]
    classes = ["Other", "Inflammatory", "Epithelial", "Spindle"]
    base = PostParams(edge_mode="absolute", grad_threshold=0.1, hv_sigma=1.0)
    assert instances_from_maps(maps[0], base, 5).max() == 1  # the average alone: merged
    assert instances_from_maps(maps[0], replace(base, member_vote=2), 5).max() == 2  # voted apart
    best, scores = tune_post(maps, samples, base, classes)
    assert best.member_vote in (1, 2) and scores["f1"] == 1.0, (best, scores)  # 1 can tie with 2 here
    assert score_maps(maps, samples, replace(best, member_vote=0), classes)["f1"] < 1.0


def test_an_ensemble_checkpoint_averages_its_members_and_refuses_bad_input(settings: Any, tmp_path: Path) -> None:
    """--ensemble combines checkpoints of different widths into one file; loaded through the backend its maps are
    the mean of the members' probability and HV maps; bad members lists, ensembles of ensembles, mismatched members
    and --init from an ensemble are refused."""
    from pathasst.finetune.nuclei_net import main, train
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend

    a, b = _tiny(tmp_path, "a.pt", seed=1), _tiny(tmp_path, "b.pt", seed=2)
    wide = tmp_path / "wide.pt"
    raw = torch.load(_tiny(tmp_path, "w0.pt", seed=3), weights_only=True)
    torch.manual_seed(3)
    model = build_nuclei_net([12, 24, 48], 5)
    raw["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    raw["config"]["widths"] = [12, 24, 48]
    torch.save(raw, wide)
    ens = tmp_path / "ens.pt"
    res = main(["--data", str(tmp_path), "--ensemble", str(a), str(wide), str(b), "--out", str(ens)])
    assert res["members"] == [TINY_WIDTHS, [12, 24, 48], TINY_WIDTHS]
    net = load_nuclei_backend(ens, settings)
    assert isinstance(net, NucleiNet) and "ensemble of 3" in net.describe()
    rgb = _he_image(80, 72).pixels
    parts = [load_nuclei_backend(p, settings).maps(rgb) for p in (a, wide, b)]
    got = net.maps(rgb)
    assert got.shape == parts[0].shape
    np.testing.assert_allclose(got, np.mean(parts, 0), atol=2e-5)
    assert np.abs(parts[0] - parts[2]).max() > 1e-2  # the members really differ
    assert net.segment(_he_image(80, 72)).labels.shape == (80, 72)

    bad = torch.load(ens, weights_only=True)
    bad["config"]["members"] = [[8, 16], "wide"]
    torch.save(bad, tmp_path / "bad_members.pt")
    with pytest.raises(WeightsError, match="PATHASST_NUCLEI_WEIGHTS.*'members' must be a list of widths lists"):
        load_nuclei_backend(tmp_path / "bad_members.pt", settings)
    with pytest.raises(ValueError, match="already an ensemble"):
        main(["--data", str(tmp_path), "--ensemble", str(ens), str(a), "--out", str(tmp_path / "e2.pt")])
    other = _tiny(tmp_path, "other.pt", type_classes=["A", "B"])
    with pytest.raises(ValueError, match="type classes"):
        main(["--data", str(tmp_path), "--ensemble", str(a), str(other), "--out", str(tmp_path / "e3.pt")])
    with pytest.raises(ValueError, match="at least two"):
        main(["--data", str(tmp_path), "--ensemble", str(a), "--out", str(tmp_path / "e4.pt")])
    with pytest.raises(ValueError, match="is an ensemble"):
        train(tmp_path, tmp_path / "run", minutes=1, max_steps=1, tune=False, log=None, init=ens)


def test_bfloat16_inference_follows_the_setting_and_matches_float32(settings: Any, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend

    path = _tiny(tmp_path)
    fp32 = load_nuclei_backend(path, settings.model_copy(update={"torch_threads": 1}))
    bf16 = load_nuclei_backend(path, settings.model_copy(update={"torch_threads": 1, "nuclei_precision": "bfloat16"}))
    assert fp32.precision == "float32" and "bfloat16" not in fp32.describe()
    assert bf16.precision == "bfloat16" and bf16.describe().endswith("um/px, bfloat16)")
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # weights stay float32
    rgb = _he_image(100, 120).pixels
    calls: list[torch.dtype] = []
    hook = bf16.model.register_forward_hook(lambda m, i, o: calls.append(o.dtype))
    a, b = fp32.maps(rgb), bf16.maps(rgb)
    hook.remove()
    assert calls and set(calls) == {torch.bfloat16}  # really computed in bfloat16
    assert a.shape == b.shape and b.dtype == np.float32
    assert not np.array_equal(a, b)
    assert np.abs(a[0] - b[0]).max() < 0.05  # P(nucleus): bfloat16 rounding only
    assert np.abs(a[1:3] - b[1:3]).max() < 0.05
    with pytest.raises(ValidationError, match="nuclei_precision"):
        settings.__class__(_env_file=None, nuclei_precision="float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        NucleiNet(fp32.model, fp32.config, fp32.device, precision="half")


def test_bfloat16_on_a_cpu_that_emulates_it_is_warned_about(settings: Any, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The CPU's bfloat16 support is read from /proc/cpuinfo's flags; choosing bfloat16 where torch would emulate it
    logs a warning that names the setting (float32 and a native-bfloat16 CPU stay quiet)."""
    import logging
    from unittest import mock

    import pathasst.tools.backends.nuclei_net as nn_mod
    from pathasst.tools.backends.runtime import cpu_native_bf16

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    spr = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    assert cpu_native_bf16(avx2) is False
    assert cpu_native_bf16(spr) is True and cpu_native_bf16(arm) is True
    assert cpu_native_bf16("model name : something\n") is None  # no flags line: unknown
    assert cpu_native_bf16() in (True, False)  # this Linux machine's own /proc/cpuinfo is readable

    ref = NucleiNet.load(_tiny(tmp_path), "nuclei_weights", settings)
    for native, precision, warned in ((False, "bfloat16", True), (True, "bfloat16", False), (False, "float32", False)):
        caplog.clear()
        with mock.patch.object(nn_mod, "cpu_native_bf16", return_value=native), caplog.at_level(logging.WARNING):
            NucleiNet(ref.model, ref.config, ref.device, precision=precision, runtime="torch")
        text = " ".join(r.getMessage() for r in caplog.records if r.name == nn_mod.__name__)
        assert ("PATHASST_NUCLEI_PRECISION=bfloat16" in text and "emulates" in text) is warned, (native, precision)


def test_onnxruntime_runs_the_network_with_torchs_maps_and_follows_the_setting(settings: Any, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """nuclei_runtime: 'auto' (the default) and 'onnxruntime' export the network to ONNX once and run it there
    (torch's module is not called), with torch's maps to 1e-4 on a tiled image, for a single network and an
    ensemble; bfloat16 stays torch's; missing packages and bad values are clear errors."""
    import sys

    from pydantic import ValidationError

    from pathasst.tools.backends import nuclei_net as nn_mod
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend

    one = settings.model_copy(update={"torch_threads": 1})
    rgb = _he_image(100, 120).pixels
    for path in (_tiny(tmp_path), _tiny_ensemble(tmp_path)):
        ref = load_nuclei_backend(path, one.model_copy(update={"nuclei_runtime": "torch"}))
        ort = load_nuclei_backend(path, one)  # auto
        assert ref.runtime == "torch" and ort.runtime == "onnxruntime" and ort.describe().endswith(", onnxruntime)")
        expected = ref.maps(rgb)
        session = ort.onnx_session()
        monkeypatch.setattr(ort.model, "forward", lambda *a: (_ for _ in ()).throw(AssertionError("torch ran")))
        got = ort.maps(rgb)
        assert ort.onnx_session() is session  # exported once
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() < 1e-4
    bf16 = load_nuclei_backend(_tiny(tmp_path), one.model_copy(update={"nuclei_precision": "bfloat16"}))
    assert bf16.runtime == "torch"  # auto: bfloat16 is torch arithmetic
    with pytest.raises(ValueError, match="bfloat16 is a torch arithmetic"):
        NucleiNet(ref.model, ref.config, ref.device, precision="bfloat16", runtime="onnxruntime")
    with pytest.raises(ValueError, match="runtime must be one of"):
        NucleiNet(ref.model, ref.config, ref.device, runtime="tensorrt")
    with pytest.raises(ValidationError, match="nuclei_runtime"):
        settings.__class__(_env_file=None, nuclei_runtime="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # not installed
    monkeypatch.setattr(nn_mod, "_onnx_available", lambda: False)
    assert load_nuclei_backend(_tiny(tmp_path), one).runtime == "torch"
    missing = load_nuclei_backend(_tiny(tmp_path), one.model_copy(update={"nuclei_runtime": "onnxruntime"}))
    with pytest.raises(RuntimeError, match="PATHASST_NUCLEI_RUNTIME=torch"):
        missing.maps(rgb)


def test_shipped_network_in_bfloat16_scores_like_float32_on_held_out_tiles(shared_data: Path, settings: Any) -> None:
    from pathasst.finetune.nuclei_pixel import held_out_tiles
    from pathasst.tools.backends.nuclei_net import SHIPPED_NET_WEIGHTS
    from pathasst.tools.evaluate import evaluate_nuclei

    if not SHIPPED_NET_WEIGHTS.is_file():
        pytest.skip(f"no shipped nuclei network at {SHIPPED_NET_WEIGHTS}")
    data = shared_data / "consep_train"
    names = held_out_tiles(data, every=6)  # 16 tiles of source images 16-26
    scores = {}
    for precision in ("float32", "bfloat16"):
        net = NucleiNet.load(SHIPPED_NET_WEIGHTS, "nuclei_weights",
                             settings.model_copy(update={"torch_threads": 2, "nuclei_precision": precision}))
        scores[precision] = evaluate_nuclei(lambda rgb, net=net: net.segment_array(rgb).labels, data, names=names)
    a, b = scores["float32"], scores["bfloat16"]
    assert a["n_tiles"] == b["n_tiles"] == len(names) >= 12
    assert b["f1"] > 0.60 and b["aji"] > 0.50, b  # measured on these 16 tiles: F1 0.635, AJI 0.530 (both precisions)
    for k in ("f1", "aji", "pq", "dice"):  # on these tiles equal to 0.002; on the 48 held-out tiles to 3 decimals
        assert abs(a[k] - b[k]) < 0.01, (k, a, b)


@pytest.mark.data
def test_the_int8_slide_network_scores_like_float32_and_refuses_a_stale_or_missing_model(
        shared_data: Path, settings: Any, tmp_path: Path) -> None:
    """The shipped int8 model of the 20x network: same held-out nuclei as float32 (measured on the 48 held-out tiles
    at 20x: F1 0.636 vs 0.638, AJI 0.491 vs 0.490); a model quantised from other weights, or none, is a clear error;
    ``python -m pathasst.finetune.quantize`` writes one that the loader accepts."""
    import shutil

    from pathasst.finetune.nuclei_data import load_samples
    from pathasst.finetune.nuclei_eval import TILE_MPP, score_maps, validation_maps
    from pathasst.finetune.nuclei_pixel import held_out_tiles
    from pathasst.finetune.quantize import main as quantize
    from pathasst.tools.backends.nuclei_net import SLIDE_NET_WEIGHTS, int8_model_path

    data = shared_data / "consep_train"
    names = held_out_tiles(data, every=6)
    scores = {}
    for int8 in (False, True):
        net = NucleiNet.load(SLIDE_NET_WEIGHTS, "slide", settings, int8=int8)
        samples = load_samples(data, names, TILE_MPP / net.config.mpp)
        scores[int8] = score_maps(validation_maps(net, samples), samples, net.config.post, net.config.type_classes)
    assert "int8" in net.describe() and scores[True]["f1"] > 0.55
    for k in ("f1", "aji"):
        assert abs(scores[True][k] - scores[False][k]) < 0.015, (k, scores)
    copy = tmp_path / "net20x.pt"
    shutil.copy(SLIDE_NET_WEIGHTS, copy)
    with pytest.raises(WeightsError, match="no int8 model .*finetune.quantize"):
        NucleiNet.load(copy, "slide", settings, int8=True)
    shutil.copy(int8_model_path(SLIDE_NET_WEIGHTS), int8_model_path(copy))
    raw = torch.load(copy, weights_only=True)
    raw["config"]["note"] = "retrained"
    torch.save(raw, copy)
    with pytest.raises(WeightsError, match="quantised from other weights"):
        NucleiNet.load(copy, "slide", settings, int8=True)
    result = quantize(["--weights", str(copy), "--data", str(data), "--tiles", "2"])
    assert result["calibration_tiles"] == 2 and Path(result["out"]) == int8_model_path(copy)
    net = NucleiNet.load(copy, "slide", settings, int8=True)
    assert net.predict_window(samples[0].rgb[:128, :128]).shape[1:] == (128, 128)


def test_the_fast_slide_path_runs_int8_and_fast_float32_does_not() -> None:
    from pathasst.core.settings import Settings
    from pathasst.tools.wsi.segment import build_segmenter

    _, fast = build_segmenter("fast", Settings(_env_file=None))
    _, exact = build_segmenter("fast-float32", Settings(_env_file=None))
    assert fast.startswith("fast: ") and "int8" in fast and "int8" not in exact


@pytest.fixture
def shipped_tool(settings: Any) -> Any:
    """The nuclei tool in ``auto`` with the shipped network as its default (skipped when the weights are absent)."""
    from pathasst.tools.backends.nuclei_net import SHIPPED_NET_WEIGHTS
    from pathasst.tools.nuclei_segmentation import NucleiSegmentationTool

    if not SHIPPED_NET_WEIGHTS.is_file():
        pytest.skip(f"no shipped nuclei network at {SHIPPED_NET_WEIGHTS}")
    return NucleiSegmentationTool(settings.model_copy(update={"torch_threads": 2}))


@pytest.mark.data
def test_domain_guard_falls_back_on_a_stain_without_eosin_but_not_on_a_near_empty_tile(shared_data: Path,
                                                                                       shipped_tool: Any) -> None:
    """``auto`` with the shipped network: an IHC image (DAB + haematoxylin, no eosin, many nuclei) is read by the
    network on its normalised nuclear stain (issue 24: one detector for nuclei_segmentation and ihc_quantification),
    and so is a 96 px crop of it; a near-empty H&E tile (CoNSeP train_2_001: no annotated nucleus, pale, little
    eosin) keeps the network's answer, where deconvolution would report stain noise as nuclei."""
    from skimage import data

    from pathasst.finetune.nuclei_pixel import _load_tile
    from pathasst.tools.nuclei_classical import AUTO_MIN_NUCLEI, _looks_like_he, segment_nuclei
    from pathasst.tools.nuclei_segmentation import AUTO_MIN_DENSITY_MM2, NucleiSegmentationInput

    tool = shipped_tool
    ihc = ImageData(np.asarray(data.immunohistochemistry()), name="ihc", mpp=0.25)
    out = tool.analyze(ihc, NucleiSegmentationInput(image="ihc")).output
    assert out.method == "nuclei_net" and out.count >= AUTO_MIN_NUCLEI, (out.method, out.count)
    assert out.type_counts is None and any("normalised nuclear stain" in n for n in ihc.notes)
    crop = ImageData(np.ascontiguousarray(ihc.pixels[200:296, 200:296]), name="crop", mpp=0.25)
    small = tool.analyze(crop, NucleiSegmentationInput(image="crop")).output
    assert small.method == "nuclei_net" and 0 < small.count < AUTO_MIN_NUCLEI, (small.method, small.count)
    rgb, truth = _load_tile(shared_data / "consep_train", "train_2_001")
    rgb = np.ascontiguousarray(rgb[..., :3])
    assert truth.max() == 0 and not _looks_like_he(rgb)
    noise, _ = segment_nuclei(rgb, 0.25, "deconvolution")
    n_noise = len(np.unique(noise)) - 1  # what the old guard returned here (object F1 0)
    assert 0 < n_noise < AUTO_MIN_DENSITY_MM2 * (256 * 0.25 / 1000) ** 2, n_noise
    empty = tool.analyze(ImageData(rgb, name="t", mpp=0.25), NucleiSegmentationInput(image="t")).output
    assert empty.method == "nuclei_net" and empty.count == 0, (empty.method, empty.count)


@pytest.mark.data
def test_domain_guard_keeps_the_network_on_a_sparse_tile_with_pigment_but_not_on_a_blind_20x_region(
        shared_data: Path, shipped_tool: Any) -> None:
    """The agreement rule (deconvolution finds many, the network under AUTO_AGREEMENT of them) needs large counts:
    on CoNSeP train_4_001 (5 annotated nuclei among brown pigment) deconvolution finds 45 objects and the network 2,
    and falling back there scored object F1 0 (11 of the 336 training tiles did so before the count floor); the
    classical ``auto`` (pixel classifier, same floor) keeps its own answer there too (3 objects, F1 0.25). On a
    20x Aperio skin region where the network misses most of the dense basal-layer nuclei (99 against deconvolution's
    352) the guard still falls back."""
    import openslide

    from pathasst.finetune.nuclei_pixel import _load_tile
    from pathasst.tools.metrics import object_f1
    from pathasst.tools.nuclei_classical import AUTO_AGREEMENT, AUTO_MIN_NUCLEI, segment_nuclei
    from pathasst.tools.nuclei_segmentation import NucleiSegmentationInput

    tool = shipped_tool
    rgb, truth = _load_tile(shared_data / "consep_train", "train_4_001")
    rgb = np.ascontiguousarray(rgb[..., :3])
    dec, _ = segment_nuclei(rgb, 0.25, "deconvolution")
    n_dec = len(np.unique(dec)) - 1
    assert 20 <= n_dec < AUTO_MIN_NUCLEI and object_f1(truth, dec)["f1"] == 0.0, n_dec
    res = tool.analyze(ImageData(rgb, name="t", mpp=0.25), NucleiSegmentationInput(image="t"))
    assert res.output.method == "nuclei_net" and res.output.count < AUTO_AGREEMENT * n_dec, res.output
    assert object_f1(truth, res.labels)["f1"] >= 0.25
    classical, used = segment_nuclei(rgb, 0.25, "auto")  # the classical guard, the same count floor
    assert used == "pixel_classifier" and object_f1(truth, classical)["f1"] >= 0.25, used

    with openslide.OpenSlide(str(shared_data / "slides" / "cmu-1-small-region.svs")) as slide:
        region = np.asarray(slide.read_region((800, 1200), 0, (512, 512)).convert("RGB"))
    out = tool.analyze(ImageData(region, name="r", mpp=0.5), NucleiSegmentationInput(image="r")).output
    assert out.method == "deconvolution" and out.count >= 300, (out.method, out.count)


@pytest.mark.data
def test_shipped_network_and_its_guard_resample_a_20x_image_once(shared_data: Path, settings: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A 0.5 um/px region goes to the network's 0.25 um/px once: the domain guard's deconvolution reuses the
    network's input. Same nuclei as the network's own ``segment`` on the image (which resamples by itself)."""
    import skimage.transform

    from pathasst.core.readers import SlideReader
    from pathasst.core.regions import Region
    from pathasst.tools.backends.nuclei_net import SHIPPED_NET_WEIGHTS
    from pathasst.tools.nuclei_segmentation import NucleiSegmentationInput, NucleiSegmentationTool

    if not SHIPPED_NET_WEIGHTS.is_file():
        pytest.skip(f"no shipped nuclei network at {SHIPPED_NET_WEIGHTS}")
    with SlideReader(shared_data / "slides" / "cmu-1-small-region.svs") as s:
        img = s.read_region(Region(x=1024, y=1943, width=192, height=192), 1.0, 192 * 192)
    assert img.mpp is not None and abs(img.mpp - 0.5) < 0.01
    tool = NucleiSegmentationTool(settings.model_copy(update={"torch_threads": 2}))
    tool.load()
    direct = tool._deep.segment(img).labels  # the backend's own path: one resample inside
    calls: list[tuple[int, ...]] = []
    original = skimage.transform.rescale

    def counting(image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(np.asarray(image).shape)
        return original(image, *args, **kwargs)

    monkeypatch.setattr(skimage.transform, "rescale", counting)  # every image resample goes through it
    res = tool.analyze(img, NucleiSegmentationInput(image="x"))
    assert res.output.method == "nuclei_net" and res.output.count > 10, (res.output.method, res.output.count)
    assert calls == [(192, 192, 3)], calls
    assert np.array_equal(res.labels, direct)


def test_configured_checkpoint_runs_through_the_tool_with_types(settings: Any, tmp_path: Path) -> None:
    from pathasst.tools.nuclei_segmentation import NucleiSegmentationTool

    path = _tiny(tmp_path, post={"np_threshold": 0.3, "min_area_px": 5})
    tool = NucleiSegmentationTool(settings.model_copy(update={"nuclei_weights": path, "torch_threads": 1}))
    half = _he_image(80, 90, mpp=0.5, seed=4)  # 20x: resampled to the model's 0.25 um/px and back
    record, result = call_tool(tool, {"image": "h.png"}, make_resolver({"h.png": half}))
    assert record.status == "ok", record.error
    out = result.output
    assert out.method == "nuclei_net" and out.backend == "nuclei_net" and result.labels.shape == (80, 90)
    assert out.count == len(np.unique(result.labels)) - 1 == len(result.features)
    assert out.type_counts is not None and set(out.type_counts) == {"Other", "Inflammatory", "Epithelial", "Spindle"}
    assert sum(out.type_counts.values()) <= out.count
    names = {f["properties"]["classification"]["name"] for f in result.features}
    assert names <= {"Other", "Inflammatory", "Epithelial", "Spindle", "Nucleus"}
    assert record.model["model"].startswith(ARCHITECTURE)
    # an explicit classical method ignores the network
    record, result = call_tool(tool, {"image": "h.png", "method": "deconvolution"}, make_resolver({"h.png": half}))
    assert result.output.method == "deconvolution" and result.output.type_counts is None


@pytest.mark.data
def test_a_short_real_training_run_lowers_the_loss_and_reloads(shared_data: Path, settings: Any, tmp_path: Path) -> None:
    from pathasst.finetune.nuclei_net import train
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend

    res = train(shared_data / "consep_train", tmp_path / "run", minutes=5, widths=(8, 16, 32), crop=64, batch=4,
                lr=1e-2, threads=1, val_every=1e9, max_steps=40, limit=12, val_limit=2, tune=False, log=None)
    losses = res["step_losses"]
    assert res["steps"] == 40 and len(losses) == 40 and np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), losses
    net = load_nuclei_backend(tmp_path / "run" / "nuclei_net.pt", settings)
    assert isinstance(net, NucleiNet) and net.config.widths == [8, 16, 32]
    ck = torch.load(str(tmp_path / "run" / "nuclei_net.pt"), map_location="cpu", weights_only=True)
    assert ck["config"]["hv_targets"] == "crop"  # the default, recorded with the weights
    assert net.segment(_he_image(64, 80)).labels.shape == (64, 80)
    with pytest.raises(ValueError, match="held-out"):
        from pathasst.finetune.nuclei_pixel import sample_pixels  # the shared guard of the training split

        sample_pixels(shared_data / "consep_train", ["train_16_000"])


@pytest.mark.data
def test_a_network_for_20x_trains_on_tiles_scanned_down_and_tunes_its_sizes_at_that_scale(
    shared_data: Path, tmp_path: Path
) -> None:
    """--mpp 0.5: tiles resampled to half size (labels alike), the checkpoint's mpp 0.5, pixel sizes of the
    post-processing a quarter (areas) / half (lengths) of the 40x ones, and the tuning grid scaled the same way."""
    from pathasst.finetune.nuclei_data import load_samples
    from pathasst.finetune.nuclei_eval import TUNE_GRID, scaled_grid
    from pathasst.finetune.nuclei_net import train

    (full,), (half,) = (load_samples(shared_data / "consep_train", ["train_1_005"], s) for s in (1.0, 0.5))
    assert full.rgb.shape == (256, 256, 3) and half.rgb.shape == (128, 128, 3) and half.labels.shape == (128, 128)
    assert 0.7 * full.labels.max() <= half.labels.max() <= full.labels.max()  # a few tiny nuclei vanish
    assert abs((half.labels > 0).mean() - (full.labels > 0).mean()) < 0.02
    res = train(shared_data / "consep_train", tmp_path / "run", minutes=5, widths=(8, 16, 32), crop=64, batch=4,
                lr=1e-2, threads=1, val_every=1e9, max_steps=3, limit=4, val_limit=1, tune=False, log=None, mpp=0.5)
    assert res["steps"] == 3
    net = NucleiNet.load(tmp_path / "run" / "nuclei_net.pt", "x")
    assert net.config.mpp == 0.5 and net.config.overlap == 24
    assert (net.config.post.min_area_px, net.config.post.min_marker_px, net.config.post.hv_sigma) == (5, 2, 1.0)
    assert net.config.post.edge_mode == "absolute"
    grid = scaled_grid(0.5)["absolute"]
    assert grid["min_area_px"] == (5, 2, 10) and grid["hv_sigma"] == (0.5, 1.0, 1.5)
    assert TUNE_GRID["absolute"]["min_area_px"] == (20, 10, 40)
    assert net.segment(_he_image(64, 80, mpp=0.5)).labels.shape == (64, 80)


@pytest.mark.data
def test_ema_training_saves_the_moving_average_not_the_raw_weights(shared_data: Path, tmp_path: Path) -> None:
    """With a decay near 1 the saved weights stay at the initial ones while the raw weights move; without EMA the
    saved weights are the moved ones. A decay outside (0, 1) is refused."""
    from pathasst.finetune.nuclei_net import train

    init = _tiny(tmp_path)
    start = torch.load(init, weights_only=True)["state_dict"]

    def moved(ema: float, out: str) -> float:
        train(shared_data / "consep_train", tmp_path / out, minutes=5, crop=64, batch=2, lr=1e-2, threads=1,
              val_every=1e9, max_steps=12, limit=4, val_limit=1, tune=False, log=None, init=init, ema=ema)
        ck = torch.load(tmp_path / out / "last.pt", weights_only=True)
        assert ck["config"].get("ema_decay") == (ema or None)
        return max(float((ck["state_dict"][k].float() - v.float()).abs().max())
                   for k, v in start.items() if v.is_floating_point() and "running" not in k)

    raw, averaged = moved(0.0, "raw"), moved(1 - 1e-7, "ema")
    assert raw > 2e-3 and averaged < raw / 10, (raw, averaged)  # (fp16 on disk: one rounding step is ~1e-4)
    with pytest.raises(ValueError, match="ema"):
        train(shared_data / "consep_train", tmp_path / "bad", minutes=1, max_steps=1, limit=2, val_limit=1,
              tune=False, log=None, init=init, ema=1.5)


@pytest.mark.data
def test_bf16_training_computes_in_bfloat16_and_saves_plain_float_weights(shared_data: Path, settings: Any,
                                                                          tmp_path: Path) -> None:
    """--bf16: the same seed and start give a first loss that differs from float32 only by bfloat16 rounding, the
    loss still falls, and the checkpoint (channels-last in training) is saved contiguous and loads for inference."""
    from pathasst.finetune.nuclei_net import train
    from pathasst.tools.backends.nuclei_yolo import load_nuclei_backend

    def run(bf16: bool, out: str, steps: int) -> list[float]:
        res = train(shared_data / "consep_train", tmp_path / out, minutes=5, widths=(8, 16, 32), crop=64, batch=4,
                    lr=1e-2, threads=1, val_every=1e9, max_steps=steps, limit=12, val_limit=2, tune=False, log=None,
                    bf16=bf16)
        return res["step_losses"]

    first32, first16 = run(False, "fp32", 1)[0], run(True, "bf16", 40)
    assert first16[0] != first32 and abs(first16[0] - first32) < 0.03 * first32, (first16[0], first32)
    assert np.all(np.isfinite(first16)) and np.mean(first16[-10:]) < 0.85 * np.mean(first16[:10]), first16
    ck = torch.load(tmp_path / "bf16" / "nuclei_net.pt", weights_only=True)
    assert ck["config"]["precision"].startswith("bfloat16")
    assert all(v.is_contiguous() for v in ck["state_dict"].values())
    net = load_nuclei_backend(tmp_path / "bf16" / "nuclei_net.pt", settings)
    assert net.segment(_he_image(64, 80)).labels.shape == (64, 80)


def test_training_device_is_resolved_and_a_gpu_torch_cannot_see_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    from pathasst.finetune.nuclei_net import main, training_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device("auto") == torch.device("cpu") and training_device("cpu") == torch.device("cpu")
    for name, message in (("cuda", "sees no CUDA GPU"), ("cuda:0", "sees no CUDA GPU"),
                          ("mps", "only cpu and cuda"), ("gpu please", "not a torch device")):
        with pytest.raises(ValueError, match=message):
            training_device(name)
    with pytest.raises(SystemExit):  # the CLI refuses before loading any data
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert training_device("auto") == torch.device("cuda") and training_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        training_device("cuda:1")


@pytest.mark.data
def test_loader_workers_draw_their_own_batches_reproducibly(shared_data: Path) -> None:
    """--workers: each DataLoader worker augments its own batches (a worker seeded like another would repeat its
    batches), and the same seed gives the same stream."""
    from pathasst.finetune.nuclei_data import load_samples
    from pathasst.finetune.nuclei_net import CropStream
    from pathasst.finetune.nuclei_pixel import train_tiles

    data = shared_data / "consep_train"
    samples = load_samples(data, train_tiles(data)[:6])

    def first(seed: int, n: int = 4) -> list[tuple]:
        it = iter(torch.utils.data.DataLoader(CropStream(samples, 64, 2, seed), batch_size=None, num_workers=2))
        return [next(it) for _ in range(n)]

    a, b, c = first(1), first(1), first(2)
    rgb, fg, hv, tp = (torch.as_tensor(x) for x in a[0])
    assert rgb.shape == (2, 3, 64, 64) and fg.shape == tp.shape == (2, 64, 64) and hv.shape == (2, 2, 64, 64)
    assert fg.dtype == torch.int64 and 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(a[i][0], a[j][0]), (i, j)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in range(4))
    assert not any(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


@pytest.mark.data
def test_device_training_script_trains_from_a_checkout_that_is_not_installed(shared_data: Path, tmp_path: Path) -> None:
    """scripts/device_train_nuclei.sh (for a bare GPU machine): imports the trainer from links to this checkout,
    trains with loader workers on the device it is given and writes a loadable checkpoint and a log; it refuses
    a missing data folder or sub-command with a clear message."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "device_train_nuclei.sh"
    env = os.environ | {"PYTHON": sys.executable, "DATA": str(shared_data / "consep_train"), "OUT": str(tmp_path / "o"),
                        "DEVICE": "cpu", "WORKERS": "2", "BATCH": "2", "WIDTHS": "8 16 32",
                        "EXTRA": "--max-steps 6 --limit 8 --val-limit 2 --crop 64"}
    run = subprocess.run(["bash", str(script), "train"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    log = (tmp_path / "o" / "train.log").read_text()
    trainer = log.splitlines()[0].split()[1]
    assert trainer.endswith("/pathasst/finetune/nuclei_net.py") and not trainer.startswith(str(root)), log[:300]
    assert "VAL final step 6" in log
    ck = torch.load(tmp_path / "o" / "nuclei_net.pt", weights_only=True)
    assert ck["config"]["device"] == "cpu" and ck["config"]["loader_workers"] == 2 and ck["config"]["steps"] == 6
    assert ck["config"]["widths"] == [8, 16, 32] and ck["config"]["precision"].startswith("bfloat16")
    assert NucleiNet.load(tmp_path / "o" / "nuclei_net.pt", "x").segment(_he_image(64, 80)).labels.shape == (64, 80)
    bad = subprocess.run(["bash", str(script), "train"], env=env | {"DATA": str(tmp_path / "none")},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no CoNSeP tiles at" in bad.stderr
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_hv_targets_of_a_crop_point_at_the_centre_of_the_visible_part() -> None:
    """A nucleus that a training crop cuts: with ``hv_targets="crop"`` (the default) its HV targets are computed on
    the crop, so both maps run from -1 to +1 over the visible part (as the network sees it at inference); cut out of
    the whole tile's targets (``"tile"``), a crop on one side of the centre gets one-sided maps."""
    from pathasst.finetune.nuclei_data import HV_TARGETS, Sample, augment, hv_map

    yy, xx = np.mgrid[:128, :128]
    labels = ((yy - 64) ** 2 + (xx - 64) ** 2 <= 60**2).astype(np.int32)  # one large nucleus filling the tile
    rgb = np.where(labels[..., None] > 0, 90, 230).astype(np.uint8).repeat(3, axis=2)
    sample = Sample("disc", rgb, labels, hv_map(labels), labels.astype(np.int64) * 3)

    def one_sided(hv: np.ndarray, fg: np.ndarray) -> bool:
        inside = hv[:, fg > 0]
        return bool(((inside.max(axis=1) < 0.5) | (inside.min(axis=1) > -0.5)).any())

    counts = {}
    for mode in HV_TARGETS:
        crops = [augment(sample, 32, np.random.default_rng(seed), hv_targets=mode) for seed in range(40)]
        assert all(c[1].sum() > 100 for c in crops)  # the nucleus is in every crop
        counts[mode] = sum(one_sided(c[2], c[1]) for c in crops)
    assert counts["crop"] == 0 and counts["tile"] >= 5, counts
    with pytest.raises(ValueError, match="hv_targets must be one of"):
        augment(sample, 32, np.random.default_rng(0), hv_targets="image")


@pytest.mark.data
def test_low_resolution_scan_augmentation_blurs_the_image_and_keeps_the_targets(shared_data: Path) -> None:
    from scipy import ndimage as ndi

    from pathasst.finetune.nuclei_data import augment, load_samples

    sample = load_samples(shared_data / "consep_train", ["train_1_000"])[0]
    for seed in range(3):
        sharp = augment(sample, 128, np.random.default_rng(seed), lowres=0.0)
        soft = augment(sample, 128, np.random.default_rng(seed), lowres=1.0)
        for a, b in zip(sharp[1:], soft[1:]):
            assert np.array_equal(a, b)  # NP, HV, TP targets untouched
        assert soft[0].shape == sharp[0].shape == (3, 128, 128) and 0 <= soft[0].min() and soft[0].max() <= 1
        detail = [float(ndi.laplace(x[1]).var()) for x in (sharp[0], soft[0])]
        assert detail[1] < 0.6 * detail[0], detail


@pytest.mark.data
def test_post_processing_is_tuned_on_validation_and_training_tiles_never_held_out(shared_data: Path,
                                                                                 tmp_path: Path) -> None:
    from pathasst.finetune.nuclei_eval import tune_checkpoint, tuning_tiles
    from pathasst.finetune.nuclei_pixel import source_image, train_tiles
    from pathasst.tools.backends.nuclei_post import EDGE_MODES

    data = shared_data / "consep_train"
    names = tuning_tiles(data, (2, 11), train_every=8)
    sources = {source_image(n) for n in names}
    assert not sources & {16, 18, 20, 22, 24, 26}
    n_val = sum(source_image(n) in (2, 11) for n in train_tiles(data))
    n_train = len(train_tiles(data)) - n_val
    assert len(names) == n_val + len(range(0, n_train, 8)) and {2, 11} < sources
    assert tuning_tiles(data, (2, 11), train_every=0) == names[:n_val]
    ckpt = _tiny(tmp_path)
    res = tune_checkpoint(ckpt, data, (2, 11), val_limit=2, log=None, train_every=100)
    assert res["tuned_on_tiles"] == 2 + len(range(0, n_train, 100))
    cfg = torch.load(ckpt, weights_only=True)["config"]
    assert cfg["post"] == res["post"] and cfg["post"]["edge_mode"] in EDGE_MODES
    assert cfg["tuned_on"]["training_tiles_every"] == 100
    assert NucleiNet.load(ckpt, "x").config.post.edge_mode == res["post"]["edge_mode"]


@pytest.mark.data
def test_shipped_network_beats_the_classical_method_on_held_out_tiles(shared_data: Path, settings: Any) -> None:
    from pathasst.finetune.nuclei_pixel import held_out_tiles
    from pathasst.tools.backends.nuclei_net import SHIPPED_NET_WEIGHTS
    from pathasst.tools.evaluate import evaluate_nuclei
    from pathasst.tools.nuclei_segmentation import NucleiSegmentationInput, NucleiSegmentationTool

    if not SHIPPED_NET_WEIGHTS.is_file():
        pytest.skip(f"no shipped nuclei network at {SHIPPED_NET_WEIGHTS}")
    data = shared_data / "consep_train"
    names = held_out_tiles(data, every=6)  # 16 tiles of source images 16-26
    tool = NucleiSegmentationTool(settings.model_copy(update={"torch_threads": 2}))
    deep = evaluate_nuclei(tool, data, names=names)
    classical_tool = NucleiSegmentationTool(settings)

    def classical(rgb: np.ndarray) -> np.ndarray:
        img = ImageData(rgb, name="t", mpp=0.25)
        return classical_tool.analyze(img, NucleiSegmentationInput(image="t", method="pixel_classifier")).labels

    base = evaluate_nuclei(classical, data, names=names)
    assert deep["n_tiles"] == base["n_tiles"] == len(names) >= 12
    assert deep["f1"] > base["f1"] + 0.05, (deep, base)
    assert deep["aji"] > base["aji"] + 0.03, (deep, base)
    assert deep["pq"] > base["pq"] + 0.03, (deep, base)
