"""The Report tab: the case's findings (keep or drop each), the AI draft built from the kept ones (read-only), the
pathologist's version (editable), sign-off, reopen and export."""

from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from pathasst.ui.facade import Facade, ReviewLockedError
from pathasst.ui.review import EVENT_LABELS, short_time
from pathasst.ui.widgets import case_server_url, current_user, reauthenticate

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
        st.success(
            f"Signed off by **{s.by}** at {short_time(s.at)} "
            f"({'edited text' if s.signed_text == 'edits' else 'AI draft'})."
        )
    else:
        st.warning("Draft: not signed off.")

    findings_tab, ai_tab, mine_tab, history_tab = st.tabs(["Findings", "AI draft", "Pathologist's version", "History"])
    with findings_tab:
        _render_findings(fac, case_id, user, locked=signed)
    with ai_tab:
        st.caption(
            f"Built from every kept finding of every question (last rebuilt {short_time(state.ai_draft.report_created_at)}, "
            f"planner {state.ai_draft.planner}); never changed by edits."
        )
        st.markdown(state.ai_draft.markdown)
    with mine_tab:
        if state.edits_outdated:
            st.warning(
                "Your edits were made on an earlier AI draft; a newer analysis has changed the draft since. "
                "Compare them, then save again or discard your edits."
            )
        if state.edits is not None:
            st.caption(f"Edited by {state.edits.by} at {short_time(state.edits.at)}.")
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
            what = EVENT_LABELS.get(ev["event"], ev["event"].replace("_", " "))
            detail = f": {ev['finding']}" if ev.get("finding") else ""
            st.markdown(f"- {short_time(ev['at'])} · **{what}** by {ev['by']}{detail}")

    st.divider()
    if not signed:
        st.markdown("**Sign-off**")
        ledger = fac.findings(case_id)
        dropped = ledger.dropped if ledger else []
        if dropped:
            st.warning(
                f"{len(dropped)} finding(s) dropped and left out of the report: "
                + "; ".join(f"Q{t.number} {f.text}" for t, f in dropped)
                + ". The sign-off record names them."
            )
        confirm = st.checkbox(
            f"I, {user or '…'}, have reviewed this report and the evidence behind it.", key="confirm_sign"
        )
        password = ""
        if fac.login_mode == "password":
            password = st.text_input("Password (asked again to sign)", type="password", key="signoff_password")
        if st.button("Sign off", type="primary", disabled=not (confirm and user), key="sign_off"):
            refused = reauthenticate(password)
            if refused:
                st.error(f"Not signed: {refused}")
            else:
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

    st.markdown("**Export** (every kept finding of every question)")
    formats = [("md", "Markdown"), ("json", "JSON"), ("pdf", "PDF"), ("geojson", "QuPath GeoJSON"), ("fhir", "FHIR")]
    cols = st.columns([1, 1, 1, 1.5, 1])
    server = case_server_url()
    for col, (fmt, label) in zip(cols, formats, strict=True):
        if server is not None:  # served behind the session, made when clicked (nothing kept in Streamlit's media)
            col.link_button(label, f"{server}/export?{urlencode({'case': case_id, 'fmt': fmt})}", key=f"export_{fmt}")
            continue
        try:
            exp = fac.export(case_id, fmt)
        except ValueError as exc:
            col.caption(f"{label}: {exc}")
            continue
        col.download_button(  # on_click="ignore": a download does not rerun the page, so quick clicks all land
            label, data=exp.data, file_name=exp.filename, mime=exp.mime, key=f"export_{fmt}", on_click="ignore"
        )


def _render_findings(fac: Facade, case_id: str, user: str, locked: bool) -> None:
    """Every finding of every question, with the question it answers and a keep box."""
    ledger = fac.findings(case_id)
    if ledger is None or not ledger.turns:
        st.caption("No findings yet.")
        return
    st.caption(
        "Every question adds its findings here; the AI draft, the overlays and the exports hold the kept ones. "
        "Untick a finding to drop it (it stays listed here and in the JSON export)."
    )
    for turn in ledger.turns:
        who = f" · {turn.asked_by}" if turn.asked_by else ""
        st.markdown(f"**Q{turn.number}.** {turn.question}  \n:gray[{turn.source}{who} · {short_time(turn.at)}]")
        for f in turn.findings:
            label = f"{f.text} [{', '.join(f.sources)}]"
            kept = st.checkbox(label, value=f.kept, key=f"keep_{case_id}_{f.id}", disabled=locked or not user)
            if kept != f.kept:
                try:
                    fac.set_finding_kept(case_id, f.id, kept, user)
                except (ReviewLockedError, ValueError, KeyError) as exc:
                    st.error(str(exc))
                else:
                    st.rerun()
    if not user:
        st.caption("Enter your name in the sidebar to keep or drop findings.")
