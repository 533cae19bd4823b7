"""The review app's case server over real HTTP on the example cases: image facts, Deep Zoom tiles from patches and
from a pyramidal slide, the overlay layers of an analysis, the login check on every route, and requests that try
to leave the cases root or reach the server by another name."""

from __future__ import annotations

import io
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from pathasst.ui import case_server
from pathasst.ui.case_server import ROUTES, CaseServer, ensure_server, serve
from pathasst.ui.export import EXPORT_FORMATS

QUESTION = "What is the Ki-67 proliferation index?"


@pytest.fixture(scope="module")
def fac(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A facade on a copy of the example cases, rules planner, no login; ki67_patch analysed once."""
    from pathasst.agent.demo import build_demo_cases
    from pathasst.core.settings import Settings
    from pathasst.ui.config import UISettings
    from pathasst.ui.facade import Facade

    root = tmp_path_factory.mktemp("case_server")
    build_demo_cases(root / "cases")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("PATHASST_") and key != "PATHASST_SHARED_DATA":
                mp.delenv(key, raising=False)
        mp.setenv("PATHASST_UI_ACCURACY_FILE", "")
        settings = Settings(_env_file=None, cases_root=root / "cases", output_dir=root / "out", planner="rules",
                            chroma_path=root / "chroma")
        facade = Facade(settings, UISettings(_env_file=None))
        facade.analyse("ki67_patch", QUESTION, "me")
        yield facade


@pytest.fixture()
def server(fac) -> Iterator[CaseServer]:
    srv = serve(fac, lambda headers, client: "tester", app_port=8501)
    yield srv
    srv.stop()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _json(srv: CaseServer, path: str):
    status, _, body = _get(srv.base_url + path)
    assert status == 200, body
    return json.loads(body)


def _tile(srv: CaseServer, case: str, image: str, level: int, col: int, row: int) -> Image.Image:
    status, headers, body = _get(f"{srv.base_url}/tile?case={case}&image={image}&level={level}&col={col}&row={row}")
    assert status == 200, body
    assert headers["Content-Type"] == "image/jpeg"
    im = Image.open(io.BytesIO(body))
    assert im.format == "JPEG"
    return im.convert("RGB")


def _tile_size(size: int, level_size: int, index: int, tile: int = 254, overlap: int = 1) -> int:
    """Width (or height) of Deep Zoom tile ``index`` along an axis of ``level_size`` px."""
    n = math.ceil(level_size / tile)
    return min(tile * (index + 1), level_size) - tile * index + overlap * (index > 0) + overlap * (index < n - 1)


def test_health_needs_no_login(fac) -> None:
    srv = serve(fac, lambda headers, client: None)
    try:
        assert _get(srv.base_url + "/health")[::2] == (200, b"ok")
    finally:
        srv.stop()


def test_info_matches_the_images(server) -> None:
    patch = _json(server, "/info?case=ki67_patch&image=ihc.png")
    assert patch == {"width": 512, "height": 512, "tile_size": 254, "overlap": 1, "levels": 10, "mpp": 0.5,
                     "kind": "patch", "offset": [0, 0]}
    slide = _json(server, "/info?case=ki67_slide&image=mosaic.tif")
    assert (slide["width"], slide["height"], slide["levels"], slide["kind"]) == (2048, 2048, 12, "wsi")
    assert slide["mpp"] == pytest.approx(0.5)


def test_patch_tiles_are_jpegs_of_the_deep_zoom_grid(server, fac) -> None:
    pixels = np.asarray(Image.open(fac.load_case("ki67_patch").images[0].path).convert("RGB")).astype(int)
    top = 9  # 512 px: levels 0..9, the last at full size
    for level, col, row in [(top, 0, 0), (top, 1, 0), (top, 2, 1), (top - 1, 1, 1), (top - 1, 0, 0), (0, 0, 0)]:
        size = 512 >> (top - level)
        im = _tile(server, "ki67_patch", "ihc.png", level, col, row)
        assert im.size == (_tile_size(512, size, col), _tile_size(512, size, row)), (level, col, row)
    first = np.asarray(_tile(server, "ki67_patch", "ihc.png", top, 0, 0)).astype(int)
    assert np.abs(first - pixels[:255, :255]).mean() < 8  # the image's own pixels, JPEG-compressed
    assert _tile(server, "ki67_patch", "ihc.png", 0, 0, 0).size == (1, 1)


def test_slide_tiles_come_from_openslide(server, fac, monkeypatch) -> None:
    import openslide

    made: list[object] = []

    class Spy(case_server.DeepZoomGenerator):
        def __init__(self, slide, **kwargs) -> None:
            made.append(slide)
            super().__init__(slide, **kwargs)

    monkeypatch.setattr(case_server, "DeepZoomGenerator", Spy)
    path = fac.load_case("ki67_slide").images[0].path
    im = _tile(server, "ki67_slide", "mosaic.tif", 11, 3, 4)
    assert im.size == (256, 256)
    assert [type(s) for s in made] == [openslide.OpenSlide]  # the pyramid read through OpenSlide, not decoded whole
    with openslide.OpenSlide(path) as slide:
        ref = np.asarray(slide.read_region((3 * 254 - 1, 4 * 254 - 1), 0, (256, 256)).convert("RGB")).astype(int)
    assert np.abs(np.asarray(im).astype(int) - ref).mean() < 8
    assert _tile(server, "ki67_slide", "mosaic.tif", 9, 1, 1).size == (_tile_size(2048, 512, 1),) * 2  # a 512 px level
    assert len(made) == 1  # one generator per file, reused


def test_layers_after_an_analysis(server, fac) -> None:
    report = fac.report("ki67_patch")
    call_id = next(r["id"] for r in report["trace"] if r["tool"] == "ihc_quantification")
    layers = _json(server, "/layers?case=ki67_patch")
    layer = next(lyr for lyr in layers if lyr["call_id"] == call_id)
    assert (layer["tool"], layer["image"], layer["question"]) == ("ihc_quantification", "ihc.png", 1)
    assert layer["label"].startswith("Q1 · ihc_quantification (")
    assert layer["features"] and all(f["geometry"]["type"] == "Polygon" for f in layer["features"])
    classes = {c["name"]: c for c in layer["classes"]}
    assert set(classes) == {"Positive", "Negative"}
    assert sum(c["count"] for c in classes.values()) == len(layer["features"])
    assert all(len(c["color"]) == 3 for c in classes.values())
    assert (layer["origin"], layer["scale"]) == ([0.0, 0.0], 1.0)
    status, headers, body = _get(server.base_url + layer["overlay_url"])
    assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
    assert _get(f"{server.base_url}/overlay?case=ki67_patch&call=call_nope")[0] == 404
    assert _json(server, "/layers?case=ki67_slide") == []


def test_every_route_but_health_needs_the_authorizer(fac) -> None:
    seen: list[str | None] = []

    def refuse(headers, client):
        seen.append(headers.get("Cookie"))
        return None

    call_id = fac.layers("ki67_patch")[0].call_id
    srv = serve(fac, refuse)
    paths = ["/info?case=ki67_patch&image=ihc.png", "/tile?case=ki67_patch&image=ihc.png&level=9&col=0&row=0",
             "/tile?case=ki67_slide&image=mosaic.tif&level=11&col=0&row=0", "/layers?case=ki67_patch",
             f"/overlay?case=ki67_patch&call={call_id}"] + [f"/export?case=ki67_patch&fmt={f}" for f in EXPORT_FORMATS]
    assert {p.split("?")[0] for p in paths} == set(ROUTES)  # every route of the server is tried
    try:
        for path in paths:
            status, headers, body = _get(srv.base_url + path, {"Cookie": "pathasst_session=stolen"})
            assert status == 401, path
            assert headers["Content-Type"].startswith("text/plain") and body == b"not signed in to the review app"
        assert seen == ["pathasst_session=stolen"] * len(paths)
    finally:
        srv.stop()


def test_paths_outside_the_case_are_refused_unread(server, monkeypatch) -> None:
    import openslide

    reads: list[object] = []

    class Spy(openslide.OpenSlide):
        def __init__(self, path) -> None:
            reads.append(path)
            super().__init__(path)

    monkeypatch.setattr(case_server, "read_patch", lambda *a, **k: reads.append(a))
    monkeypatch.setattr(case_server.openslide, "OpenSlide", Spy)
    for query in ("case=../x&image=ihc.png", "case=..&image=ki67_patch/ihc.png", "case=ki67_patch/..&image=ihc.png",
                  "case=ki67_patch&image=../../etc/passwd", "case=ki67_patch&image=/etc/passwd",
                  "case=ki67_patch&image=../ki67_slide/mosaic.tif", "case=nope&image=ihc.png"):
        for route in ("info", "tile"):
            status, _, body = _get(f"{server.base_url}/{route}?{query}&level=0&col=0&row=0")
            assert status == 404, (route, query, body)
            assert b"root:" not in body and b"Traceback" not in body
    assert _get(f"{server.base_url}/layers?case=../../etc")[0] == 404
    assert reads == []


def test_bad_tile_coordinates_are_400(server) -> None:
    base = f"{server.base_url}/tile?case=ki67_patch&image=ihc.png"
    for q in ("&level=10&col=0&row=0", "&level=-1&col=0&row=0", "&level=9&col=3&row=0", "&level=9&col=0&row=-1",
              "&level=x&col=0&row=0", "&level=9&col=0"):
        status, _, body = _get(base + q)
        assert status == 400, (q, body)
    assert _get(f"{server.base_url}/info?case=ki67_patch")[0] == 400  # no image
    assert _get(f"{server.base_url}/nowhere")[0] == 404


def test_cors_for_the_app_and_loopback_names_only(server) -> None:
    url = f"{server.base_url}/info?case=ki67_patch&image=ihc.png"
    _, headers, _ = _get(url, {"Origin": "http://127.0.0.1:8501"})
    assert headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8501"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    for origin in ("http://127.0.0.1:9999", "http://evil.example:8501", "null"):
        _, headers, _ = _get(url, {"Origin": origin})
        assert "Access-Control-Allow-Origin" not in headers, origin
    status, _, body = _get(url, {"Host": f"rebound.example:{server.server_address[1]}"})
    assert status == 403 and b"ihc" not in body


def test_ensure_server_starts_one_server(fac) -> None:
    first = ensure_server(fac, lambda headers, client: "tester")
    assert ensure_server(fac, lambda headers, client: None) == first
    assert first.startswith("http://127.0.0.1:")
    assert _get(first + "/health")[::2] == (200, b"ok")


def test_exports_are_downloads_of_every_kept_finding(server, fac) -> None:
    call_id = next(r["id"] for r in fac.report("ki67_patch")["trace"] if r["tool"] == "ihc_quantification")
    for fmt, (suffix, mime) in EXPORT_FORMATS.items():
        status, headers, body = _get(f"{server.base_url}/export?case=ki67_patch&fmt={fmt}")
        assert status == 200 and headers["Content-Type"] == mime, fmt
        assert headers["Content-Disposition"] == f'attachment; filename="ki67_patch-{suffix}"'
        assert body == fac.export("ki67_patch", fmt).data
        if fmt != "pdf":
            assert call_id.encode() in body, fmt
    assert _get(f"{server.base_url}/export?case=ki67_patch&fmt=docx")[0] == 404
    assert _get(f"{server.base_url}/export?case=qc_blurred&fmt=md")[0] == 404  # nothing analysed yet
    assert _get(f"{server.base_url}/export?case=../etc&fmt=md")[0] == 404


def test_the_apps_sessions_open_the_server_when_login_is_on(fac, monkeypatch) -> None:
    """With a login, the server takes the app's session cookie and nothing else (the authorizer the pages use)."""
    import bcrypt

    from pathasst.ui.config import UISettings
    from pathasst.ui.facade import Facade

    monkeypatch.setenv("PATHASST_UI_PASSWORD_HASH", bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode())
    locked = Facade(fac.settings, UISettings(_env_file=None))
    token = locked.sign_in("pathologist", "pw", "127.0.0.1")
    srv = serve(locked, lambda headers, client: locked.authorize_request(headers.get("Cookie")))
    try:
        url = f"{srv.base_url}/export?case=ki67_patch&fmt=md"
        assert _get(url)[0] == 401
        assert _get(url, {"Cookie": "pathasst_session=forged"})[0] == 401
        assert _get(url, {"Cookie": f"other=1; pathasst_session={token}"})[0] == 200
        locked.sessions.revoke(token)
        assert _get(url, {"Cookie": f"pathasst_session={token}"})[0] == 401  # signed out
    finally:
        srv.stop()
