"""The ABMIL head loader of slide_classification: single heads (the old format) and seed ensembles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pathasst.core.errors import WeightsError  # noqa: E402
from pathasst.tools.backends.abmil import (  # noqa: E402
    ABMILHead,
    build_abmil,
    ensemble_members,
    ensemble_state_dict,
)

CONFIG = {"labels": ["benign", "malignant"], "embedder": "hed_texture"}


def _head(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    return build_abmil(171, 2, 64, 32).state_dict()


def _load(tmp_path: Path, state_dict: dict[str, Any], settings: Any, name: str = "head.pt") -> ABMILHead:
    path = tmp_path / name
    torch.save({"state_dict": state_dict, "config": CONFIG}, path)
    return ABMILHead.load(path, "slide_mil_weights", "torch", settings)


def _bag() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(7, 171)).astype(np.float32)


def test_single_head_checkpoint_loads_as_before(tmp_path: Path, settings: Any) -> None:
    """A plain state dict (the format of the first shipped head) is a one-member head: same output as the module."""
    sd = _head(0)
    head = _load(tmp_path, sd, settings)
    assert head.config.members == 1 and len(head.models) == 1 and "seeds" not in head.describe()
    probs, att = head.predict(_bag())
    model = build_abmil(171, 2, 64, 32)
    model.load_state_dict(sd)
    with torch.inference_mode():
        logits, ref_att = model.eval()(torch.from_numpy(_bag()))
    assert probs == pytest.approx(torch.softmax(logits, -1).numpy(), abs=1e-6)
    assert att == pytest.approx(ref_att.numpy(), abs=1e-6) and att.sum() == pytest.approx(1.0)


def test_ensemble_of_identical_heads_equals_one_head(tmp_path: Path, settings: Any) -> None:
    sd = _head(0)
    one = _load(tmp_path, sd, settings, "one.pt")
    two = _load(tmp_path, ensemble_state_dict([sd, sd]), settings, "two.pt")
    assert two.config.members == 2 and "mean of 2 seeds" in two.describe()
    p1, a1 = one.predict(_bag())
    p2, a2 = two.predict(_bag())
    assert p2 == pytest.approx(p1, abs=1e-12) and a2 == pytest.approx(a1, abs=1e-12)


def test_ensemble_averages_probabilities_and_attention(tmp_path: Path, settings: Any) -> None:
    heads = [_head(s) for s in (0, 1, 2)]
    singles = [_load(tmp_path, sd, settings, f"h{i}.pt").predict(_bag()) for i, sd in enumerate(heads)]
    probs, att = _load(tmp_path, ensemble_state_dict(heads), settings, "ens.pt").predict(_bag())
    assert probs == pytest.approx(np.mean([p for p, _ in singles], axis=0), abs=1e-12)
    assert att == pytest.approx(np.mean([a for _, a in singles], axis=0), abs=1e-12)
    assert probs.sum() == pytest.approx(1.0) and att.sum() == pytest.approx(1.0)
    assert not np.allclose(singles[0][0], singles[1][0])  # the members differ, so the mean is a real average


def test_ensemble_state_dict_round_trips_and_bad_ensembles_are_refused(tmp_path: Path, settings: Any) -> None:
    heads = [_head(0), _head(1)]
    members = ensemble_members(ensemble_state_dict(heads))
    assert len(members) == 2 and all(torch.equal(members[1][k], heads[1][k]) for k in heads[1])
    assert ensemble_members(heads[0]) == [heads[0]]
    with pytest.raises(WeightsError, match="numbered"):
        ensemble_members({f"members.1.{k}": v for k, v in heads[0].items()})
    small = build_abmil(171, 2, 32, 16).state_dict()
    with pytest.raises(WeightsError, match="differ"):
        _load(tmp_path, ensemble_state_dict([heads[0], small]), settings)


def test_shipped_slide_heads_load(tmp_path: Path, settings: Any) -> None:
    """The shipped head and every fold head of its cross-validation load, whichever format they have."""
    from pathasst.tools.evaluate_slide import CV_HEADS
    from pathasst.tools.slide_classification import SHIPPED_SLIDE_WEIGHTS

    head = ABMILHead.load(SHIPPED_SLIDE_WEIGHTS, "shipped slide head", "torch", settings)
    probs, att = head.predict(np.zeros((3, head.config.in_dim), np.float32))
    assert head.config.labels == ["benign", "malignant"] and probs.sum() == pytest.approx(1.0) and len(att) == 3
    folds = torch.load(CV_HEADS, map_location="cpu", weights_only=True)["folds"]
    assert len(folds) == 7
    for i, f in enumerate(folds):
        torch.save({"state_dict": f["state_dict"], "config": f["config"]}, tmp_path / f"fold{i}.pt")
        fold = ABMILHead.load(tmp_path / f"fold{i}.pt", "slide_mil_weights", "torch", settings)
        assert fold.config.in_dim == head.config.in_dim and len(fold.models) == fold.config.members
