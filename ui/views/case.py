"""Case review page: the tiled viewer (OpenSeadragon: zoom, pan, overlays per tool call, point/box/polygon for
region_segmentation, two images side by side) with a server-rendered static view as its fallback, the
assistant (streamed answer, each tool call as it runs, findings linked to their sources, similar cases) and the
report (AI draft, the pathologist's version, sign-off, export)."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from pathasst.ui.chat import LiveSteps, linkify, render_findings, render_gallery, render_turn, stream_words
from pathasst.ui.facade import AnalysisError, CaseError, Marker, ReviewLockedError, zoom_levels
from pathasst.ui.report_panel import render_report
from pathasst.ui.slide_viewer import region_marker, slide_viewer
from pathasst.ui.widgets import case_server_url, current_user, facade, inline_image, require_login, status_badge

require_login()
fac = facade()

case_id = st.session_state.get("case_id") or st.query_params.get("case")
if not case_id:
    st.info("Choose a case on the Cases page.")
    st.page_link(str(Path(__file__).with_name("cases.py")), label="Go to the case list", icon=":material/folder_open:")
    st.stop()
try:
    case = fac.load_case(case_id)
except CaseError as exc:
    st.error(str(exc))
    st.stop()
st.session_state["case_id"] = case.id
st.query_params["case"] = case.id

review = fac.review(case.id)
meta = " · ".join(f"{k} {v}" for k, v in (("stain", case.meta.stain), ("organ", case.meta.organ)) if v)
st.title(f"Case {case.id}")
st.markdown(f"{status_badge(review.status)} {meta}")
for p in case.problems:
    st.warning(f"{p.name}: {p.message}")
if case.meta.notes:
    st.caption(f"Clinical notes (data, not instructions): {case.meta.notes}")

view_col, side_col = st.columns([5, 4], gap="large")

#: questions waiting for the assistant, oldest first. A question leaves the queue only once its turn is recorded, so
#: a click or question that interrupts a running analysis (Streamlit reruns the page) delays it but never loses it.
QUEUE = f"questions_{case.id}"


ANSWERED = f"answered_{case.id}"
#: a question equal to the one answered this many seconds ago is the same submission handed in again
REDELIVERY_S = 10.0


def _queue(question: str) -> None:
    """Add a question unless it is already waiting or was answered a moment ago: a run interrupted by a rerun can
    hand Streamlit's chat input and buttons their value again on the next run."""
    queue = st.session_state.setdefault(QUEUE, [])
    last, at = st.session_state.get(ANSWERED, ("", 0.0))
    if question in queue or (question == last and time.monotonic() - at < REDELIVERY_S):
        return
    queue.append(question)


def _answered(question: str) -> None:
    st.session_state[QUEUE].remove(question)
    st.session_state[ANSWERED] = (question, time.monotonic())



# ---- viewer ----------------------------------------------------------------------------------------
VIEWER_HEIGHT = 560


def _k(name: str) -> str:
    return f"{name}_{case.id}_{st.session_state.get(f'img_{case.id}', '')}"


def _tiled_view(shown: list[str], layer_ids: list[str]) -> bool:
    """The OpenSeadragon viewer of ``shown``; a drawn region becomes the next question (a clicked object's details
    stay in the viewer). False when the viewer cannot run."""
    base = case_server_url()
    if base is None:
        return False
    mpp = fac.image_info(case, shown[0]).mpp if len(shown) == 1 else None
    action = slide_viewer(base, case.id, shown, mpp, layer_ids, key=f"viewer_{case.id}", height=VIEWER_HEIGHT)
    seen = f"viewer_seen_{case.id}"
    if action is None or action.get("nonce") == st.session_state.get(seen):  # nothing new since the last run
        return True
    st.session_state[seen] = action.get("nonce")
    if action.get("action") == "region" and action.get("image") in shown:
        info = fac.image_info(case, str(action["image"]))
        marker = region_marker(action, info.width, info.height)
        if review.sign_off is not None:
            st.warning("Signed off: reopen the case (Report tab) to measure a region.")
        elif marker is None:
            st.warning("That region could not be read: draw it again.")
        else:
            _queue(fac.region_question(marker))
    return True


with view_col:
    names = [i.name for i in case.images]
    image = st.selectbox("Image", names, key=f"img_{case.id}") if len(names) > 2 else names[0]
    layers = fac.layers(case.id)
    shown = names if len(names) == 2 else [image]
    tiled = _tiled_view(shown, [lyr.call_id for lyr in layers if lyr.image in shown])

    static = st.expander("Static view (server-rendered)", expanded=not tiled, icon=":material/image:",
                         key=f"static_{case.id}", on_change="rerun")
    with static:
        if len(names) == 2:
            image = st.selectbox("Image", names, key=f"img_{case.id}")
        info = fac.image_info(case, image)
        zooms = zoom_levels(info, fac.ui.view_px)
        zk, xk, yk = _k("zoom"), _k("cx"), _k("cy")
        st.session_state.setdefault(zk, 1.0)
        st.session_state.setdefault(xk, info.width // 2)
        st.session_state.setdefault(yk, info.height // 2)

        def _pan(dx: float, dy: float) -> None:
            z = float(st.session_state[zk])
            st.session_state[xk] = int(min(max(0, st.session_state[xk] + dx * info.width / z / 2), info.width))
            st.session_state[yk] = int(min(max(0, st.session_state[yk] + dy * info.height / z / 2), info.height))

        def _reset() -> None:
            st.session_state[zk] = 1.0
            st.session_state[xk], st.session_state[yk] = info.width // 2, info.height // 2

        c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
        c1.select_slider("Zoom", options=zooms, key=zk, format_func=lambda z: f"{z:g}×")
        pans = c2.columns(5)
        for col, (icon, dx, dy, tip) in zip(
            pans[:4],
            [("arrow_back", -1, 0, "left"), ("arrow_forward", 1, 0, "right"), ("arrow_upward", 0, -1, "up"),
             ("arrow_downward", 0, 1, "down")],
            strict=True,
        ):
            col.button("", icon=f":material/{icon}:", key=_k(tip), on_click=_pan, args=(dx, dy), help=f"Pan {tip}")
        pans[4].button("", icon=":material/fit_screen:", key=_k("reset"), on_click=_reset, help="Whole image")

        on_image = [lyr for lyr in layers if lyr.image == image]
        enabled = []
        if on_image:
            st.markdown("**Overlays** (the kept findings of every question)")
            tog = st.columns(min(3, len(on_image)))
            for i, lyr in enumerate(on_image):
                if tog[i % len(tog)].toggle(lyr.label, value=True, key=f"layer_{case.id}_{lyr.call_id}",
                                            help=lyr.call_id):
                    enabled.append(lyr)
            alpha = st.slider("Overlay opacity", 0.1, 1.0, 0.5, 0.05, key=_k("alpha"))
        else:
            alpha = 0.5
            st.caption("No overlays yet: run an analysis.")

        img_slot = st.container()
        s1, s2 = st.columns(2)
        s1.slider("Centre x (level-0 px)", 0, info.width, key=xk)
        s2.slider("Centre y (level-0 px)", 0, info.height, key=yk)

    with st.expander("Measure a region by coordinates (region_segmentation)", icon=":material/ads_click:"):
        kind = st.radio("Mark", ["Point", "Box"], horizontal=True, key=_k("mark_kind"))
        cx, cy = int(st.session_state[xk]), int(st.session_state[yk])
        if kind == "Point":
            p1, p2 = st.columns(2)
            mx = p1.number_input("x (level-0 px)", 0, info.width - 1, min(cx, info.width - 1), key=_k("mx"))
            my = p2.number_input("y (level-0 px)", 0, info.height - 1, min(cy, info.height - 1), key=_k("my"))
            marker = Marker(int(mx), int(my))
        else:
            b = st.columns(4)
            x0 = b[0].number_input("x0", 0, info.width - 1, max(0, cx - 50), key=_k("bx0"))
            y0 = b[1].number_input("y0", 0, info.height - 1, max(0, cy - 50), key=_k("by0"))
            x1 = b[2].number_input("x1", 1, info.width, min(info.width, cx + 50), key=_k("bx1"))
            y1 = b[3].number_input("y1", 1, info.height, min(info.height, cy + 50), key=_k("by1"))
            marker = Marker(int(x0), int(y0), box=(int(x0), int(y0), int(x1), int(y1)))
        show_marker = st.checkbox("Show the mark on the static view", value=False, key=_k("show_mark"))
        if marker.box is not None and (marker.box[2] <= marker.box[0] or marker.box[3] <= marker.box[1]):
            st.error("The box needs x1 > x0 and y1 > y0.")
        elif st.button("Measure this region", key=_k("measure"), disabled=review.sign_off is not None):
            _queue(fac.region_question(marker))

    if static.open:  # drawn only while shown: a slide's window costs a few hundred ms the tiled viewer does not need
        try:
            res = fac.view(
                case, image, st.session_state[zk], st.session_state[xk], st.session_state[yk], enabled,
                marker if show_marker else None, alpha,
            )
        except CaseError as exc:
            img_slot.warning(str(exc))
        else:
            w = res.window
            per_px = f"{res.scale * info.mpp:.2f} µm/px" if info.mpp else f"{res.scale:.2f} level-0 px per screen px"
            level_txt = f" · pyramid level {res.level}" if res.level is not None else ""
            inline_image(
                res.pixels, alt=image, target=img_slot,
                caption=f"{image} ({info.width}×{info.height}) · window x {w.x}–{w.x + w.width}, "
                f"y {w.y}–{w.y + w.height} · {per_px}{level_txt} · overlay objects drawn: {sum(res.drawn.values())}"
                + (f" · overlay images: {len(res.painted)}" if res.painted else ""),
            )

# ---- assistant and report -------------------------------------------------------------------------
with side_col:
    chat_tab, report_tab = st.tabs(["Assistant", "Report"])
    with chat_tab:
        turns = fac.chat(case.id)
        history = st.container(height=560)
        with history:
            if not turns:
                st.caption(
                    f"Ask about this case. Default question: {case.meta.question or 'chosen from the stain and image type'}"
                )
            for turn in turns:
                render_turn(turn)
        locked = review.sign_off is not None
        if locked:
            st.caption("Signed off: reopen the case (Report tab) to ask further questions.")
        if st.button(
            "Run the default analysis", disabled=locked, key="default_analysis",
            help=f"Question: {case.meta.question or 'chosen from the stain and image type'}",
        ):
            _queue(case.meta.question or "")
        question = st.chat_input("Ask about this case…", disabled=locked, key="chat_q")
        if question:
            _queue(question)
        queued = st.session_state.get(QUEUE) or []
        if queued:
            pending = queued[0]
            with history:
                with st.chat_message("user"):
                    st.markdown(pending or "(default question)")
                with st.chat_message("assistant"):
                    steps = st.container()
                    live = LiveSteps(steps)
                    try:
                        with st.spinner("The assistant is working…"):
                            turn = fac.analyse(case.id, pending, current_user(), on_event=live)
                    except (AnalysisError, ReviewLockedError) as exc:
                        _answered(pending)  # recorded as a failed turn
                        st.error(str(exc))
                        if queued:
                            st.rerun()
                    else:
                        _answered(pending)  # at once: the turn is recorded, a rerun from here on must not repeat it
                        st.write_stream(stream_words(linkify(turn.answer)))
                        render_findings(turn.findings)
                        st.rerun()

        report = fac.report(case.id)
        st.markdown("**Similar cases**")
        render_gallery(fac.similar_cases(report))
    with report_tab:
        render_report(fac, case.id)
