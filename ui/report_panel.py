"""The Report tab: the AI draft (read-only), the pathologist's version (editable), sign-off, reopen and export."""

from __future__ import annotations

import streamlit as st

from pathasst.ui.facade import Facade, ReviewLockedError
from pathasst.ui.widgets import current_user

__all__ = ["render_report"]


def render_report(fac: Facade, case_id: str) -> None:
    state = fac.review(case_id)
    if state.ai_draft is None:
        st.info("No report yet: ask the assistant a question (or run the default analysis) to build the AI draft.")
        return
    user = current_user()
    signed = state.sign_off is not None
    if signed:
        s = state.sign_off
        st.success(f"Signed off by **{s.by}** at {s.at} ({'edited text' if s.signed_text == 'edits' else 'AI draft'}).")
    else:
        st.warning("Draft: not signed off.")

    ai_tab, mine_tab, history_tab = st.tabs(["AI draft", "Pathologist's version", "History"])
    with ai_tab:
        st.caption(
            f"Built from the grounded report of the last analysis ({state.ai_draft.report_created_at}, planner "
            f"{state.ai_draft.planner}); never changed by edits."
        )
        st.markdown(state.ai_draft.markdown)
    with mine_tab:
        if state.edits_outdated:
            st.warning(
                "Your edits were made on an earlier AI draft; a newer analysis has changed the draft since. "
                "Compare them, then save again or discard your edits."
            )
        if state.edits is not None:
            st.caption(f"Edited by {state.edits.by} at {state.edits.at}.")
        text = st.text_area(
            "Report text (Markdown)",
            value=state.final_markdown,
            height=420,
            disabled=signed,
            key=f"edit_{case_id}_{state.edits.sha256 if state.edits else state.ai_draft.sha256}",
        )
        c1, c2 = st.columns(2)
        if c1.button("Save edits", disabled=signed or not user, type="primary", key="save_edits"):
            fac.save_edits(case_id, text, user)
            st.rerun()
        if c2.button("Discard edits", disabled=signed or state.edits is None, key="discard_edits"):
            fac.discard_edits(case_id, user)
            st.rerun()
        if not user:
            st.caption("Enter your name in the sidebar to edit or sign off.")
    with history_tab:
        for ev in reversed(state.history):
            st.markdown(f"- {ev['at']} · **{ev['event']}** by {ev['by']}")

    st.divider()
    if not signed:
        st.markdown("**Sign-off**")
        confirm = st.checkbox(
            f"I, {user or '…'}, have reviewed this report and the evidence behind it.", key="confirm_sign"
        )
        if st.button("Sign off", type="primary", disabled=not (confirm and user), key="sign_off"):
            try:
                fac.sign_off(case_id, user)
            except (ReviewLockedError, ValueError) as exc:
                st.error(str(exc))
            else:
                st.rerun()
    else:
        with st.expander("Reopen this case"):
            reason = st.text_input("Reason", key="reopen_reason")
            if st.button("Reopen", disabled=not (reason.strip() and user), key="reopen"):
                fac.reopen(case_id, user, reason.strip())
                st.rerun()

    st.markdown("**Export**")
    cols = st.columns([1, 1, 1, 1.5])
    for col, (fmt, label) in zip(
        cols, [("md", "Markdown"), ("json", "JSON"), ("pdf", "PDF"), ("geojson", "QuPath GeoJSON")], strict=True
    ):
        exp = fac.export(case_id, fmt)
        col.download_button(label, data=exp.data, file_name=exp.filename, mime=exp.mime, key=f"export_{fmt}")
