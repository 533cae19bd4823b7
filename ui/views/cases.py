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

def _create_case() -> None:
    """The upload form's callback: create the case, or keep every field and say what is wrong."""
    ss = st.session_state
    try:
        payload = []
        for f in ss.get("new_files") or []:
            fac.check_upload(f.name, f.size, f.getvalue()[:16])
            payload.append((f.name, f.getvalue()))
        case = fac.create_case(
            (ss.get("new_case_id") or "").strip(), payload, ss.get("new_stain") or None, ss.get("new_organ") or None,
            ss.get("new_question") or None, mpp=ss.get("new_mpp"),
        )
    except (UploadError, CaseError) as exc:
        ss["upload_error"] = str(exc)
        return
    ss["flash"] = f"Case {case.id} created with {len(case.images)} image(s); {fac.resolution_note(case)}."
    for key in ("new_case_id", "new_stain", "new_organ", "new_question", "new_mpp", "new_files"):
        ss.pop(key, None)


if not rows:
    st.info(
        "No cases yet. A case is a folder under the cases root holding images (.png .jpg .tif) or a slide (.svs "
        ".ndpi .tif …) and an optional `case.yaml` (stain, organ, mpp, question, notes). Copy case folders into "
        f"`{fac.cases_root}`, upload one below, or run `make demo` and then `pathasst ui` to open the example cases."
    )
with st.expander("New case from files", icon=":material/upload:", expanded=not rows):
    st.caption("Files are checked (type, size, readability) before the case is created.")
    if err := st.session_state.pop("upload_error", None):
        st.error(err)
    with st.form("upload", clear_on_submit=False):
        u1, u2, u3, u4 = st.columns(4)
        u1.text_input("Case id", key="new_case_id")
        u2.text_input("Stain", placeholder="H&E, Ki-67, ER…", key="new_stain")
        u3.text_input("Organ", key="new_organ")
        u4.number_input(
            "Resolution (µm/px)", min_value=0.01, max_value=50.0, value=None, step=0.01, format="%.4f", key="new_mpp",
            help="Microns per pixel at full resolution. Leave empty for a slide that records it; without it, "
            f"measures use the assumed default ({fac.settings.default_mpp or 'none: pixels'}).",
        )
        st.text_input("Default question (optional)", key="new_question")
        st.file_uploader(
            "Images or slides",
            accept_multiple_files=True,
            key="new_files",
            type=[e.lstrip(".") for e in sorted(UPLOAD_EXTENSIONS)],
        )
        st.form_submit_button("Create case", on_click=_create_case)
