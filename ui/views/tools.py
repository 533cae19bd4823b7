"""Tools page: the catalogue with each tool's input/output schema, backend, weights status and measured accuracy."""

from __future__ import annotations

import streamlit as st

from pathasst.ui.facade import AnalysisError
from pathasst.ui.widgets import facade, require_login

require_login()
fac = facade()
st.title("Tools")

try:
    tools = fac.tools()
except AnalysisError as exc:
    st.error(str(exc))
    st.stop()


def _acc(acc: dict | None) -> str:
    if not acc:
        return "not measured"
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in acc.items())


st.dataframe(
    [
        {"tool": t.name, "version": t.version, "backend (last run)": t.backend, "weights": t.weights_status,
         "measured accuracy": _acc(t.accuracy)}
        for t in tools
    ],
    hide_index=True,
    width="stretch",
)
for t in tools:
    with st.expander(f"{t.name} v{t.version}"):
        st.write(t.description)
        st.markdown(f"**Backend (last run):** {t.backend}  \n**Weights:** {t.weights_status}  \n"
                    f"**Measured accuracy:** {_acc(t.accuracy)}")
        c1, c2 = st.columns(2)
        with c1:
            st.markdown("**Input schema**")
            st.json(t.input_schema, expanded=False)
        with c2:
            st.markdown("**Output schema**")
            st.json(t.output_schema, expanded=False)
