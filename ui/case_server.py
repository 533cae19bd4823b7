"""The review app's companion HTTP server: Deep Zoom tiles, image facts and overlay layers of the cases, on loopback.

The Streamlit page starts it once per process (:func:`ensure_server`) on 127.0.0.1; the tiled viewer
(``pathasst.ui.slide_viewer``) reads from it. Every case id and image name of a request goes through the facade
(``load_case`` and the case's own image list), so a request never builds a path itself. Every route but ``/health``
asks the ``authorize`` callable first (it reads the request's headers, e.g. the session cookie); ``None`` is a 401.

Routes (GET): ``/health``; ``/info?case=&image=`` (size of the Deep Zoom image, tile size, overlap, levels, mpp, kind,
and the level-0 ``offset`` of its top-left corner: a slide with bounds shows only them); ``/tile?case=&image=&level=
&col=&row=`` (JPEG); ``/layers?case=`` (each tool call's features, classes and overlay PNG URL);
``/overlay?case=&call=`` (that PNG); ``/export?case=&fmt=`` (the Report tab's exports, as downloads).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import openslide
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from pathasst.core.cases import Case, CaseError, CaseImage, ensure_inside
from pathasst.core.readers import read_patch
from pathasst.ui.facade import Facade, Layer

__all__ = ["ROUTES", "Authorizer", "CaseServer", "HttpError", "TileCache", "ensure_server", "layer_json", "serve"]

log = logging.getLogger(__name__)

TILE_SIZE = 254
OVERLAP = 1
JPEG_QUALITY = 85
#: seconds a checked (case, image) pair is trusted before the facade checks it again (a tile burst asks dozens)
RESOLVE_TTL_S = 5.0
#: host names a browser on this machine uses for loopback; other Host or Origin headers are refused
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_COLOR = [255, 200, 0]

#: ``authorize(headers, client_address)``: the user's name, or None to refuse the request
Authorizer = Callable[[Message, tuple[str, int]], str | None]


class HttpError(Exception):
    """A request that gets a plain-text error answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- tiles -------------------------------------------------------------------------------------
class _Pyramid:
    """One image's Deep Zoom generator and the slide it reads from (closed when evicted)."""

    def __init__(self, path: Path, kind: str, max_pixels: int) -> None:
        if kind == "wsi":
            self.slide: openslide.AbstractSlide = openslide.OpenSlide(path)
            props = self.slide.properties
            self.offset = (int(props.get(openslide.PROPERTY_NAME_BOUNDS_X, 0)),
                           int(props.get(openslide.PROPERTY_NAME_BOUNDS_Y, 0)))
        else:
            self.slide = openslide.ImageSlide(Image.fromarray(read_patch(path, max_pixels).pixels))
            self.offset = (0, 0)
        self.dz = DeepZoomGenerator(self.slide, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=True)

    def close(self) -> None:
        self.slide.close()


class TileCache:
    """Deep Zoom generators per (path, mtime), least recently used first out."""

    def __init__(self, max_pixels: int, size: int = 8) -> None:
        self.max_pixels = max_pixels
        self.size = size
        self._items: OrderedDict[tuple[str, float], _Pyramid] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, kind: str) -> _Pyramid:
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        pyramid = _Pyramid(path, kind, self.max_pixels)  # outside the lock: a big patch takes a while to decode
        with self._lock:
            pyramid = self._items.setdefault(key, pyramid)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)[1].close()
        return pyramid

    def close(self) -> None:
        with self._lock:
            for pyramid in self._items.values():
                pyramid.close()
            self._items.clear()


# --- layers ------------------------------------------------------------------------------------
def _classes(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts: Counter[str] = Counter()
    colors: dict[str, list[int]] = {}
    for f in features:
        cls = (f.get("properties") or {}).get("classification") or {}
        name = str(cls.get("name") or "unclassified")
        counts[name] += 1
        colour = cls.get("color")
        ok = isinstance(colour, (list, tuple)) and len(colour) >= 3
        colors.setdefault(name, [int(c) for c in colour[:3]] if ok else DEFAULT_COLOR)
    return [{"name": n, "color": colors[n], "count": c} for n, c in counts.most_common()]


def layer_json(case_id: str, layer: Layer) -> dict[str, Any]:
    """One :class:`~pathasst.ui.viewer.Layer` as the viewer reads it (overlay PNG as a URL of this server)."""
    overlay = f"/overlay?{urlencode({'case': case_id, 'call': layer.call_id})}" if layer.overlay_path else None
    return {
        "call_id": layer.call_id, "tool": layer.tool, "image": layer.image, "question": layer.question,
        "label": layer.label, "features": layer.features, "overlay_url": overlay, "origin": list(layer.origin),
        "scale": layer.scale, "classes": _classes(layer.features),
    }


# --- the server --------------------------------------------------------------------------------
class CaseServer(ThreadingHTTPServer):
    """Serves one facade's cases on 127.0.0.1; :meth:`start` runs it on a daemon thread."""

    daemon_threads = True

    def __init__(self, fac: Facade, authorize: Authorizer, port: int = 0, app_port: int | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.fac = fac
        self.authorize = authorize
        self.app_port = app_port
        self.tiles = TileCache(fac.settings.max_image_pixels)
        self._resolved: dict[tuple[str, str], tuple[float, Case, CaseImage]] = {}
        self._resolved_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> CaseServer:
        threading.Thread(target=self.serve_forever, name="pathasst-case-server", daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.tiles.close()

    # ---- what a request may reach ------------------------------------------------------------
    def resolve(self, case_id: str, name: str) -> tuple[Case, CaseImage]:
        """The case and its image ``name``, as the facade checks them (CaseError otherwise); trusted a few seconds."""
        key = (case_id, name)
        now = time.monotonic()
        with self._resolved_lock:
            hit = self._resolved.get(key)
            if hit is not None and hit[0] > now:
                return hit[1], hit[2]
        case = self.fac.load_case(case_id)
        image = self.fac.case_image(case, name)
        with self._resolved_lock:
            if len(self._resolved) > 256:
                self._resolved.clear()
            self._resolved[key] = (now + RESOLVE_TTL_S, case, image)
        return case, image

    def allows_origin(self, origin: str) -> bool:
        """A page served from loopback (on the app's port when it is known) may read answers with credentials."""
        parts = urlsplit(origin)
        try:
            port = parts.port
        except ValueError:
            return False
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        return (parts.scheme == "http" and host in LOOPBACK_HOSTS
                and (self.app_port is None or port == self.app_port))

    def allows_host(self, host: str | None) -> bool:
        """Only loopback names reach the server (a DNS-rebound name is refused)."""
        return host in {f"{h}:{self.server_address[1]}" for h in LOOPBACK_HOSTS}

    # ---- routes --------------------------------------------------------------------------------
    def info(self, q: dict[str, str]) -> dict[str, Any]:
        case, image = self.resolve(_param(q, "case"), _param(q, "image"))
        pyramid = self._pyramid(image)
        width, height = pyramid.dz.level_dimensions[-1]
        return {
            "width": width, "height": height, "tile_size": TILE_SIZE, "overlap": OVERLAP,
            "levels": pyramid.dz.level_count, "mpp": self.fac.image_info(case, image.name).mpp, "kind": image.kind,
            "offset": list(pyramid.offset),
        }

    def tile(self, q: dict[str, str]) -> bytes:
        _, image = self.resolve(_param(q, "case"), _param(q, "image"))
        level, col, row = (_int(q, k) for k in ("level", "col", "row"))
        dz = self._pyramid(image).dz
        if not 0 <= level < dz.level_count:
            raise HttpError(400, f"level must be 0-{dz.level_count - 1}")
        cols, rows = dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise HttpError(400, f"level {level} has {cols} x {rows} tiles: no tile ({col}, {row})")
        try:
            tile = dz.get_tile(level, (col, row))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise HttpError(500, f"{image.name}: tile not readable ({type(exc).__name__})") from exc
        buf = io.BytesIO()
        tile.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue()

    def layers(self, q: dict[str, str]) -> list[dict[str, Any]]:
        case_id = _param(q, "case")
        return [layer_json(case_id, lyr) for lyr in self.fac.layers(case_id)]

    def overlay(self, q: dict[str, str]) -> bytes:
        case_id, call_id = _param(q, "case"), _param(q, "call")
        for lyr in self.fac.layers(case_id):
            if lyr.call_id == call_id and lyr.overlay_path is not None:
                path = ensure_inside(lyr.overlay_path, self.fac.layout.case_dir(case_id))
                if path.suffix.lower() == ".png":
                    return path.read_bytes()
        raise HttpError(404, f"case {case_id} has no overlay image for call {call_id!r}")

    def export(self, q: dict[str, str]) -> tuple[bytes, str, dict[str, str]]:
        """A case's export (the Report tab's links), as a download."""
        case_id, fmt = _param(q, "case"), _param(q, "fmt")
        self.fac.case_dir(case_id)
        try:
            exp = self.fac.export(case_id, fmt)
        except ValueError as exc:
            raise HttpError(404, str(exc)) from exc
        return exp.data, exp.mime, {"Content-Disposition": f'attachment; filename="{exp.filename}"'}

    def _pyramid(self, image: CaseImage) -> _Pyramid:
        try:
            return self.tiles.get(image.path, image.kind)
        except (openslide.OpenSlideError, OSError) as exc:
            raise HttpError(500, f"{image.name}: not readable ({type(exc).__name__})") from exc


def _param(q: dict[str, str], name: str) -> str:
    value = q.get(name)
    if not value:
        raise HttpError(400, f"missing parameter {name!r}")
    return value


def _int(q: dict[str, str], name: str) -> int:
    try:
        return int(_param(q, name))
    except ValueError:
        raise HttpError(400, f"parameter {name!r} must be an integer") from None


_JSON, _JPEG, _PNG = "application/json", "image/jpeg", "image/png"
#: path -> (method of CaseServer, content type (None: the method returns body, type and headers), Cache-Control)
ROUTES: dict[str, tuple[str, str | None, str]] = {
    "/info": ("info", _JSON, "private, max-age=300"),
    "/tile": ("tile", _JPEG, "private, max-age=300"),
    "/layers": ("layers", _JSON, "no-store"),
    "/overlay": ("overlay", _PNG, "no-store"),
    "/export": ("export", None, "no-store"),
}


class _Handler(BaseHTTPRequestHandler):
    server: CaseServer
    protocol_version = "HTTP/1.1"  # keep-alive: a viewport asks for dozens of tiles at once

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        status, ctype, body, cache, extra = self._answer()
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", cache)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Vary", "Origin")
            origin = self.headers.get("Origin")
            if origin and self.server.allows_origin(origin):
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Access-Control-Allow-Credentials", "true")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the viewer dropped a tile it no longer needs
            self.close_connection = True

    def _answer(self) -> tuple[int, str, bytes, str, dict[str, str]]:
        """(status, content type, body, Cache-Control, more headers) of this request; errors as plain text, never a
        traceback."""
        text = "text/plain; charset=utf-8"
        url = urlsplit(self.path)
        try:
            if not self.server.allows_host(self.headers.get("Host")):
                raise HttpError(403, "this server answers on loopback names only")
            if url.path == "/health":
                return 200, text, b"ok", "no-store", {}
            route = ROUTES.get(url.path)
            if route is None:
                raise HttpError(404, f"no route {url.path}")
            if self.server.authorize(self.headers, self.client_address) is None:
                raise HttpError(401, "not signed in to the review app")
            method, ctype, cache = route
            q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            result = getattr(self.server, method)(q)
            if ctype is None:
                body, ctype, extra = result
                return 200, ctype, body, cache, extra
            body = result if isinstance(result, bytes) else json.dumps(result).encode("utf-8")
            return 200, ctype, body, cache, {}
        except HttpError as exc:
            return exc.status, text, str(exc).encode("utf-8"), "no-store", {}
        except CaseError as exc:  # an unknown case or image, as the facade words it
            return 404, text, str(exc).encode("utf-8"), "no-store", {}
        except Exception:  # the traceback goes to the app's log only
            log.exception("case server: %s failed", url.path)
            return 500, text, b"internal error (see the app's log)", "no-store", {}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        log.debug("case server %s: " + format, self.address_string(), *args)


def serve(fac: Facade, authorize: Authorizer, port: int = 0, app_port: int | None = None) -> CaseServer:
    """A started :class:`CaseServer` (``port`` 0: a free one)."""
    return CaseServer(fac, authorize, port, app_port).start()


_server: CaseServer | None = None
_server_lock = threading.Lock()


def ensure_server(fac: Facade, authorize: Authorizer, port: int = 0, app_port: int | None = None) -> str:
    """The base URL of this process's case server, started by the first call (later calls' arguments are ignored).

    ``app_port``: the Streamlit app's port, the only loopback origin given credentialed CORS answers (None: any)."""
    global _server
    with _server_lock:
        if _server is None:
            _server = serve(fac, authorize, port, app_port)
        return _server.base_url
