"""Settings: environment and .env are read, every field is documented in .env.example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from pathasst.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def test_env_example_documents_every_setting():
    from pathasst.ui.config import UISettings

    text = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"PATHASST_([A-Z0-9_]+)=", text))
    fields = {name.upper() for name in Settings.model_fields} | {f"UI_{n.upper()}" for n in UISettings.model_fields}
    assert fields - documented == set(), "settings missing from .env.example"
    assert documented - fields == set(), ".env.example documents settings that do not exist"


def test_environment_and_dotenv(tmp_path, monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("PATHASST_"):
            monkeypatch.delenv(k)
    env = tmp_path / ".env"
    env.write_text("PATHASST_PLANNER=llamacpp\nPATHASST_STEP_BUDGET=3\nPATHASST_MITOSIS_WEIGHTS=\n")
    s = Settings(_env_file=env)
    assert s.planner == "llamacpp" and s.step_budget == 3 and s.mitosis_weights is None
    monkeypatch.setenv("PATHASST_STEP_BUDGET", "5")
    monkeypatch.setenv("PATHASST_CHROMA_PATH", str(tmp_path / "lib"))
    s = Settings(_env_file=env)
    assert s.step_budget == 5 and s.chroma_path == tmp_path / "lib"  # environment beats .env
    monkeypatch.setenv("PATHASST_PLANNER", "gpt")
    with pytest.raises(ValidationError, match="rules"):
        Settings(_env_file=None)


def test_env_example_is_up_to_date():
    import runpy

    render = runpy.run_path(str(REPO / "scripts" / "write_env_example.py"))["render"]
    assert (REPO / ".env.example").read_text() == render(), "run: python scripts/write_env_example.py"
