"""Shared fixtures. Tests never download anything; data from ../shared/data is skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PATHASST_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real data with ground truth); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only present on developer machines and CI)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def demo_cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example cases of ``pathasst demo`` (a Ki-67 patch, a pyramidal slide, QC, broken and empty cases), built
    once per test module; tests copy them before writing into them."""
    from pathasst.agent.demo import build_demo_cases

    root = tmp_path_factory.mktemp("demo") / "cases"
    build_demo_cases(root)
    return root


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Settings object isolated from the user's environment and .env, with temporary folders."""
    for key in list(os.environ):
        if key.startswith("PATHASST_") and key != "PATHASST_SHARED_DATA":
            monkeypatch.delenv(key, raising=False)
    from pathasst.core.settings import Settings

    return Settings(
        _env_file=None,
        output_dir=tmp_path / "out",
        cache_dir=Path(os.environ.get("PATHASST_TEST_CACHE", Path.home() / ".cache" / "pathasst")),
        chroma_path=tmp_path / "chroma",
    )
