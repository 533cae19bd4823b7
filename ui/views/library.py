"""Library page: add cases to the case library (with a progress bar) and show its statistics."""

from __future__ import annotations

import streamlit as st

from pathasst.ui.facade import AnalysisError, CaseError
from pathasst.ui.widgets import facade, require_login

require_login()
fac = facade()
st.title("Case library")

if flash := st.session_state.pop("lib_flash", None):
    st.success(flash[0])
    st.markdown("\n".join(f"- {line}" for line in flash[1]))

status = fac.library_status()
embedder = status.stats.get("image_embedder") if status.available else None
st.caption(f"Past cases embedded for similar-case retrieval ({f'`{embedder}` ' if embedder else ''}embeddings in Chroma).")
if not status.available:
    st.info(status.message)
else:
    numbers = {k: v for k, v in status.stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        cols = st.columns(min(4, len(numbers)))
        for i, (k, v) in enumerate(numbers.items()):
            cols[i % len(cols)].metric(k.replace("_", " "), v)
    facts = {k: v for k, v in status.stats.items() if k not in numbers}
    if facts:
        st.caption("  \n".join(f"{k.replace('_', ' ')}: `{v}`" for k, v in facts.items()))

try:
    ids = [r.id for r in fac.list_cases() if r.n_files]
except CaseError as exc:
    st.error(str(exc))
    st.stop()

chosen = st.multiselect("Cases to add", ids, key="lib_cases", disabled=not status.available)
if st.button("Add to library", type="primary", disabled=not (status.available and chosen), key="lib_add"):
    bar = st.progress(0.0, text="Adding cases…")
    log = st.container()

    def _progress(done: int, total: int, cid: str, outcome: str) -> None:
        bar.progress(done / total, text=f"{done}/{total}: {cid}")
        with log:
            st.markdown(f"- **{cid}**: {outcome}")

    try:
        results = fac.add_to_library(chosen, _progress)
    except AnalysisError as exc:
        st.error(str(exc))
    else:
        ok = sum(1 for _, _, good in results if good)
        st.session_state["lib_flash"] = (
            f"{ok} of {len(results)} cases in the library.", [f"**{c}**: {o}" for c, o, _ in results]
        )
        st.rerun()  # fresh statistics
