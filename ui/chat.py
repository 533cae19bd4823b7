"""Rendering the assistant conversation: live tool-call steps while the graph runs, past turns, findings, gallery."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import streamlit as st

from pathasst.ui.review import ChatTurn, short_time
from pathasst.ui.widgets import anchor, inline_image

__all__ = ["LiveSteps", "render_call", "render_findings", "render_gallery", "render_turn", "stream_words"]

_STATE = {"ok": "complete", "not_configured": "complete", "bad_call": "error", "failed": "error"}
_ICON = {"ok": ":material/check_circle:", "not_configured": ":material/block:", "bad_call": ":material/error:",
         "failed": ":material/error:"}
_CALL_REF = re.compile(r"\[(call_[A-Za-z0-9_-]{1,40})\]")


def _call_label(call: dict[str, Any]) -> str:
    image = call.get("image") or (call.get("arguments") or {}).get("image") or ""
    return (
        f"{call['tool']} · {image} · {call.get('status')} · {float(call.get('duration_s') or 0):.2f} s — "
        f"{call.get('summary', '')}"
    )


def render_call(call: dict[str, Any]) -> None:
    """One tool call: name, arguments, duration and summary always visible; the full output expandable."""
    anchor(call["id"])
    with st.expander(_call_label(call), icon=_ICON.get(call.get("status", ""), ":material/build:")):
        st.caption(f"call id `{call['id']}` · tool version {call.get('tool_version') or '?'}")
        st.markdown("**Arguments**")
        st.json(call.get("arguments") or {}, expanded=True)
        if call.get("error"):
            st.error(call["error"])
        if call.get("output") is not None:
            st.markdown("**Full output**")
            st.json(call["output"], expanded=False)
        if call.get("model"):
            st.markdown("**Model**")
            st.json(call["model"], expanded=False)
        for note in call.get("notes") or []:
            st.caption(note)


class LiveSteps:
    """``on_event`` callback for ``Engine.run``: shows the plan and each tool call as it starts and ends."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.running: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        with self.container:
            if event == "case_loaded":
                st.caption(f"Case {payload.get('case_id')} loaded: {', '.join(payload.get('images', []))}")
            elif event == "plan":
                decision = payload.get("decision") or {}
                calls = decision.get("calls") or []
                if calls:
                    names = ", ".join(f"{c['tool']}({c['arguments'].get('image', '')})" for c in calls)
                    st.markdown(f"**Plan (step {payload.get('step')}):** {names}")
                else:
                    st.markdown(f"**Plan (step {payload.get('step')}):** answer — {decision.get('rationale') or ''}")
            elif event == "tool_start":
                box = st.status(f"{payload['tool']} running… {payload.get('arguments')}", expanded=False)
                self.running[payload["id"]] = box
            elif event == "tool_end":
                self.calls.append(payload)
                box = self.running.pop(payload["id"], None)
                if box is None:
                    box = st.status(payload["tool"])
                box.update(label=_call_label(payload), state=_STATE.get(payload.get("status", ""), "complete"))
                with box:
                    st.json(payload.get("arguments") or {}, expanded=False)
                    if payload.get("output") is not None:
                        st.json(payload["output"], expanded=False)
                    if payload.get("error"):
                        st.error(payload["error"])


def stream_words(text: str, delay: float = 0.01) -> Iterator[str]:
    """The answer in small chunks for ``st.write_stream``."""
    words = text.split(" ")
    for i in range(0, len(words), 3):
        yield " ".join(words[i : i + 3]) + " "
        time.sleep(delay)


def linkify(text: str) -> str:
    """Turn ``[call_x]`` references into links to the tool-call step of that id."""
    return _CALL_REF.sub(lambda m: f"[[{m.group(1)}]](#{m.group(1)})", text)


def render_findings(findings: list[dict[str, Any]]) -> None:
    if not findings:
        return
    st.markdown("**Findings** (each linked to the tool call it comes from)")
    lines = []
    for f in findings:
        srcs = ", ".join(f"[{s}](#{s})" if s.startswith("call_") else s for s in f.get("sources", []))
        lines.append(f"- {f.get('text')} — source: {srcs or 'none'}")
    st.markdown("\n".join(lines))


def render_gallery(similar: list[dict[str, Any]]) -> None:
    """Similar cases as a gallery: thumbnail, diagnosis and distance, nearest first."""
    if not similar:
        st.caption("No similar cases retrieved for this case (ask e.g. “find similar cases”; needs the case library).")
        return
    cols = st.columns(4)
    for i, s in enumerate(similar[:12]):
        with cols[i % 4]:
            if s.get("thumbnail"):
                inline_image(s["thumbnail"], alt=f"case {s.get('case_id')}", max_side=256)
            st.markdown(
                f"**{s.get('case_id')}**  \n{s.get('diagnosis') or 'diagnosis unknown'}  \n"
                f"distance {float(s.get('distance') or 0):.3f} · source {', '.join(f'`{x}`' for x in s.get('sources', []))}"
            )


def render_turn(turn: ChatTurn) -> None:
    with st.chat_message("user"):
        number = f"**Q{turn.number}.** " if turn.number else ""
        st.markdown(number + (turn.question or "(default question)"))
        st.caption(f"{turn.asked_by or 'reviewer'} · {short_time(turn.at)}")
    with st.chat_message("assistant"):
        if turn.status == "failed":
            st.error(f"The analysis failed: {turn.error}")
            return
        for call in turn.calls:
            render_call(call)
        st.markdown(linkify(turn.answer))
        render_findings(turn.findings)
        st.caption(f"{len(turn.calls)} tool call(s) · {turn.seconds:.1f} s")
