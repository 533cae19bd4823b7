"""Regenerate .env.example from the settings models (run after adding a setting; tests/test_settings.py checks it)."""

from __future__ import annotations

from pathlib import Path

from pathasst.core.settings import Settings
from pathasst.ui.config import UISettings

GROUPS = {
    "planner": "Planner",
    "cases_root": "Data and outputs",
    "max_image_pixels": "Limits",
    "nuclei_weights": "Weights (empty = embedded backend, or a clear 'not configured' result)",
}


def render() -> str:
    lines = [
        "# PathAsst settings. Copy to .env and edit; every variable is optional.",
        "# Environment variables override .env. An empty value means 'not set'.",
        "",
    ]

    def emit(model, prefix: str, groups: dict[str, str]) -> None:
        for name, f in model.model_fields.items():
            if name in groups:
                lines.append(f"# --- {groups[name]} ---")
            d = f.default
            if f.default_factory is not None:
                d = "~/.cache/pathasst" + ("/chroma" if name == "chroma_path" else "")
            if d is None:
                d = ""
            if hasattr(d, "get_secret_value"):
                d = d.get_secret_value()
            lines.append(f"# {f.description}")
            lines.append(f"# {prefix}{name.upper()}={d}")

    emit(Settings, "PATHASST_", GROUPS)
    lines.append("")
    emit(UISettings, "PATHASST_UI_", {"password_hash": "Review app (pathasst ui)"})
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (Path(__file__).resolve().parents[1] / ".env.example").write_text(render(), encoding="utf-8")
