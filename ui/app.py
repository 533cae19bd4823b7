"""PathAsst case review: the Streamlit entry point (``pathasst ui`` runs ``streamlit run`` on this file).

The login gate runs before any page: with a login configured, no page renders until the user is signed in. The
pages are declared first (hidden until then), so a deep link such as ``/case?case=X`` keeps its page through the
sign-in.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pathasst.ui import widgets

st.set_page_config(page_title="PathAsst case review", page_icon=":material/biotech:", layout="wide")

_VIEWS = Path(__file__).resolve().parent / "views"
nav = st.navigation(
    [
        st.Page(_VIEWS / "cases.py", title="Cases", icon=":material/folder_open:", url_path="cases", default=True),
        st.Page(_VIEWS / "case.py", title="Case review", icon=":material/biotech:", url_path="case"),
        st.Page(_VIEWS / "library.py", title="Library", icon=":material/collections_bookmark:", url_path="library"),
        st.Page(_VIEWS / "tools.py", title="Tools", icon=":material/construction:", url_path="tools"),
    ],
    position="sidebar" if widgets.signed_in() else "hidden",
)
if not widgets.gate():
    st.stop()
widgets.sidebar()
nav.run()
