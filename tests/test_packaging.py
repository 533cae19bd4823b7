"""Packaging: the folders at the root import as ``pathasst.<area>`` from an editable install and from a wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AREAS = ("core", "memory", "tools", "planning", "graphs", "agent", "ui", "cli", "finetune")


def test_editable_install_imports_every_area():
    import pathasst.agent
    import pathasst.tools

    assert Path(pathasst.agent.__file__).resolve() == REPO / "agent" / "__init__.py"
    assert Path(pathasst.tools.__file__).resolve() == REPO / "tools" / "__init__.py"


@pytest.mark.slow
def test_wheel_has_only_the_pathasst_namespace_and_imports(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheel = next(tmp_path.glob("pathasst-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"pathasst"}, top
    for area in AREAS:
        assert f"pathasst/{area}/__init__.py" in names
    assert not any(n.startswith(("pathasst/tests/", "pathasst/bench/")) for n in names)
    assert "pathasst/planning/data/planner_dev.jsonl" in names
    for shipped in ("data/ebhi_seg_split.json", "data/amibr_split.json", "weights/tissue_net.pt", "weights/mitosis_net.pt",
                    "weights/slide_abmil.pt", "weights/slide_abmil_cv.pt", "weights/TISSUE_MODEL_CARD.md",
                    "weights/nuclei_net_20x.pt", "weights/nuclei_net_20x.int8.onnx", "wsi/run.py",
                    "weights/nuclei_pixel.npz"):
        assert f"pathasst/tools/{shipped}" in names, shipped  # the embedded backends work from a wheel
    assert "pathasst/finetune/data/weights/image_filter.pt" in names
    for asset in ("index.html", "main.js", "style.css", "openseadragon.min.js", "openseadragon-LICENSE.txt"):
        assert f"pathasst/ui/slide_viewer/frontend/{asset}" in names, asset  # the viewer loads nothing from the web
    sources = {
        "pathasst/" + p.relative_to(REPO).as_posix()
        for area in AREAS
        for p in (REPO / area).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources - set(names) == set(), "modules missing from the wheel (add their package to pyproject.toml)"
    eps = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[pathasst.tools]" in eps and "nuclei_segmentation = pathasst.tools.nuclei_segmentation" in eps
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "sys.path_hooks[:] = [h for h in sys.path_hooks if 'editable' not in repr(h).lower()]\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        "import importlib\n"
        f"mods = [importlib.import_module('pathasst.' + a) for a in {AREAS!r}]\n"
        "print('\\n'.join(m.__file__ for m in mods))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    files = out.stdout.split()
    assert len(files) == len(AREAS) and all(f.startswith(str(unpacked)) for f in files), files
