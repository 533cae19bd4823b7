"""The tiled slide viewer: a Streamlit custom component around OpenSeadragon, shipped in ``frontend/`` (nothing
loads from the internet), reading Deep Zoom tiles and overlay layers from the case server
(:mod:`pathasst.ui.case_server`).

Wheel zoom, drag pan, an overview, a scale bar, each tool call's overlay as a layer with per-class toggles, object
details on click, point / box / polygon drawing, and two images side by side with pan and zoom synced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamlit.components.v1 import declare_component

from pathasst.ui.viewer import Marker

__all__ = ["FRONTEND", "region_marker", "slide_viewer"]

FRONTEND = Path(__file__).resolve().parent / "frontend"

_component = declare_component("slide_viewer", path=str(FRONTEND))


def slide_viewer(
    base_url: str,
    case_id: str,
    images: list[str],
    mpp: float | None,
    layers_on: list[str] | None,
    *,
    key: str,
    height: int = 560,
) -> dict[str, Any] | None:
    """Show ``images`` of case ``case_id`` (two: side by side, synced) from the case server at ``base_url``.

    ``mpp``: microns per level-0 pixel for the scale bar (None: the server's figure per image; "px" without one).
    ``layers_on``: call ids of the layers to list and draw (None: all of the case's on these images); a change makes
    the viewer fetch the layers again. Returns the user's last action, or None before the first:
    ``{"action": "object", "call_id", "tool", "image", "properties", "nonce"}`` or
    ``{"action": "region", "kind": "point" | "box" | "polygon", "image", "point" | "box" | "polygon", "nonce"}``
    (level-0 pixels). The same action comes back on every rerun until the next: compare its ``nonce``.
    """
    value = _component(
        base_url=base_url, case_id=case_id, images=images, mpp=mpp, layers_on=layers_on, height=height,
        key=key, default=None,
    )
    return value if isinstance(value, dict) else None


def region_marker(action: dict[str, Any], width: int, height: int) -> Marker | None:
    """A ``region`` action as the point or box ``region_segmentation`` takes, in level-0 pixels clipped to the
    ``width`` x ``height`` image; a polygon goes as its bounding box. None when the action is not a usable region."""
    kind = action.get("kind")
    try:
        if kind == "point":
            raw = [action["point"]]
        elif kind == "box":
            x0, y0, x1, y1 = action["box"]
            raw = [(x0, y0), (x1, y1)]
        elif kind == "polygon":
            raw = list(action["polygon"])
        else:
            return None
        pts = [(min(max(int(x), 0), width - 1), min(max(int(y), 0), height - 1)) for x, y in raw]
    except (KeyError, TypeError, ValueError):
        return None
    if kind == "point":
        return Marker(*pts[0])
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    if min(xs) == max(xs) or min(ys) == max(ys):
        return None
    return Marker(min(xs), min(ys), box=(min(xs), min(ys), max(xs), max(ys)))
