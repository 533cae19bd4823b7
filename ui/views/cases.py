"""Cases page: every case under the cases root with its status, stain and organ; search, filter, open, upload."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pathasst.ui.facade import UPLOAD_EXTENSIONS, CaseError, UploadError, filter_cases
from pathasst.ui.widgets import facade, require_login, status_badge

require_login()
fac = facade()
st.title("Cases")
if msg := st.session_state.pop("flash", None):
    st.success(msg)

try:
    rows = fac.list_cases()
except CaseError as exc:
    st.error(str(exc))
    st.stop()

CASE_PAGE = str(Path(__file__).with_name("case.py"))


def _open(case_id: str) -> None:
    st.session_state["case_id"] = case_id


c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
text = c1.text_input("Search", placeholder="case id, stain, organ, question…", key="case_search")
statuses = c2.multiselect("Status", ["new", "analysed", "signed off", "failed"], key="case_status")
stains = c3.multiselect("Stain", sorted({r.stain or "unknown" for r in rows}), key="case_stain")
organs = c4.multiselect("Organ", sorted({r.organ or "unknown" for r in rows}), key="case_organ")
shown = filter_cases(rows, text, statuses, stains, organs)
counts = {s: sum(1 for r in rows if r.status == s) for s in ("new", "analysed", "signed off", "failed")}
st.caption(
    f"{len(shown)} of {len(rows)} cases · " + " · ".join(f"{n} {s}" for s, n in counts.items() if n)
)

head = st.columns([3, 2, 2, 2, 1, 3, 1.3])
for col, label in zip(head, ["Case", "Status", "Stain", "Organ", "Files", "Last analysis / sign-off", ""], strict=True):
    if label:
        col.markdown(f"**{label}**")
for r in shown[:200]:
    cols = st.columns([3, 2, 2, 2, 1, 3, 1.3], vertical_alignment="center")
    cols[0].markdown(f"**{r.id}**" + (f"  \n:red[{r.problem}]" if r.problem else ""))
    cols[1].markdown(status_badge(r.status))
    cols[2].write(r.stain or "–")
    cols[3].write(r.organ or "–")
    cols[4].write(str(r.n_files))
    when = f"signed by {r.signed_by} at {r.signed_at}" if r.signed_by else (r.analysed_at or "–")
    cols[5].write(when)
    if cols[6].button("Open", key=f"open_{r.id}", on_click=_open, args=(r.id,)):
        st.switch_page(CASE_PAGE)
if len(shown) > 200:
    st.caption(f"showing the first 200 of {len(shown)}; refine the search")

with st.expander("New case from files", icon=":material/upload:"):
    st.caption(
        f"Images (.png .jpg .tif) or single-file slides (.svs .ndpi .tif …), up to {fac.ui.max_upload_mb} MB each. "
        "Files are checked (type, size, readability) before the case is created."
    )
    with st.form("upload", clear_on_submit=True):
        u1, u2, u3 = st.columns(3)
        new_id = u1.text_input("Case id", key="new_case_id")
        new_stain = u2.text_input("Stain", placeholder="H&E, Ki-67, ER…", key="new_stain")
        new_organ = u3.text_input("Organ", key="new_organ")
        new_q = st.text_input("Default question (optional)", key="new_question")
        files = st.file_uploader(
            "Images or slides",
            accept_multiple_files=True,
            key="new_files",
            type=[e.lstrip(".") for e in sorted(UPLOAD_EXTENSIONS)],
        )
        if st.form_submit_button("Create case"):
            try:
                payload = []
                for f in files or []:
                    fac.check_upload(f.name, f.size, f.getvalue()[:16])
                    payload.append((f.name, f.getvalue()))
                case = fac.create_case(new_id.strip(), payload, new_stain or None, new_organ or None, new_q or None)
            except (UploadError, CaseError) as exc:
                st.error(str(exc))
            else:
                st.session_state["flash"] = f"Case {case.id} created with {len(case.images)} image(s)."
                st.rerun()
