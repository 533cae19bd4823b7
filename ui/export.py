"""Export of a reviewed case: Markdown, JSON, PDF (fpdf2, core fonts), QuPath GeoJSON and the FHIR report.

Every export states whether the text is the AI draft or the pathologist's edited version, and who signed it off
when (or that it is an unsigned draft). The JSON export carries both texts and the tool trace.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from pathasst.ui.review import ReviewState

__all__ = ["EXPORT_FORMATS", "export_geojson", "export_json", "export_markdown", "export_pdf", "latin1"]

EXPORT_FORMATS: dict[str, tuple[str, str]] = {  # format -> (file suffix, MIME type)
    "md": ("report.md", "text/markdown"),
    "json": ("report.json", "application/json"),
    "pdf": ("report.pdf", "application/pdf"),
    "geojson": ("annotations.geojson", "application/geo+json"),
    "fhir": ("report.fhir.json", "application/fhir+json"),
}


def _status_block(review: ReviewState) -> list[str]:
    lines = ["", "---", ""]
    if review.edits is not None:
        lines.append(f"Text: edited by {review.edits.by} at {review.edits.at} (the AI draft is kept unchanged in the JSON export).")
    else:
        lines.append("Text: AI draft, not edited.")
    if review.sign_off is not None:
        s = review.sign_off
        lines.append(f"Signed off by {s.by} at {s.at} (sha256 {s.sha256[:16]}).")
    else:
        lines.append("DRAFT: not signed off.")
    return lines


def export_markdown(review: ReviewState) -> str:
    return review.final_markdown.rstrip("\n") + "\n" + "\n".join(_status_block(review)) + "\n"


def export_json(review: ReviewState, report: dict[str, Any] | None, findings: dict[str, Any] | None = None) -> str:
    """The final text and its source, the review record, the case's report and every finding (kept or dropped)."""
    doc = {
        "case_id": review.case_id,
        "status": review.status,
        "final_text": review.final_markdown,
        "final_text_source": "edits" if review.edits else "ai_draft",
        "review": review.model_dump(mode="json"),
        "report": report,
        "findings": findings,
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)


def export_geojson(features: list[dict[str, Any]]) -> str:
    """A FeatureCollection QuPath imports (File > Import objects): detections/annotations in level-0 pixels."""
    return json.dumps({"type": "FeatureCollection", "features": features})


_REPLACE = {
    "\u2014": "-", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
    "\u03bc": "\u00b5", "\u2264": "<=", "\u2265": ">=", "\u2022": "-", "\u2192": "->", "\u2190": "<-",
    "\u2212": "-", "\u00b3": "^3",
}


def latin1(text: str) -> str:
    """``text`` with every character fpdf2's core fonts cannot draw replaced (latin-1 only)."""
    out = []
    for ch in text:
        ch = _REPLACE.get(ch, ch)
        try:
            ch.encode("latin-1")
            out.append(ch)
        except UnicodeEncodeError:
            folded = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
            out.append(folded or "?")
    return "".join(out)


_MD_INLINE = re.compile(r"(\*\*|__|\*|`)")


def export_pdf(review: ReviewState, image: bytes | None = None, caption: str = "") -> bytes:
    """A plain, readable PDF of the final text and the review status (headings, bullets, tables as text), with
    ``image`` (JPEG: the case's image and its overlays) after the text."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(latin1(f"PathAsst report {review.case_id}"))
    pdf.set_creator("PathAsst")
    pdf.set_creation_date(review.last_change)  # one review state, one PDF: no export clock in it
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def para(text: str, size: float = 10, style: str = "", family: str = "Helvetica") -> None:
        pdf.set_font(family, style, size)
        pdf.set_x(pdf.l_margin)
        pdf.multi_cell(width, size * 0.5, latin1(text), new_x="LMARGIN", new_y="NEXT")

    for raw in export_markdown(review).splitlines():
        line = raw.rstrip()
        if not line:
            pdf.ln(2)
        elif line.startswith("# "):
            para(_MD_INLINE.sub("", line[2:]), 15, "B")
        elif line.startswith("## "):
            pdf.ln(1)
            para(_MD_INLINE.sub("", line[3:]), 12, "B")
        elif line.startswith("|"):
            if set(line) <= set("|-: "):
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            para("  ".join(cells), 8, family="Courier")
        elif line.startswith("---"):
            pdf.ln(1)
        else:
            text = _MD_INLINE.sub("", line)
            if text.startswith("- "):
                text = "- " + text[2:]
            elif text.startswith("> "):
                text = text[2:]
            para(text, 10)
    if image is not None:
        import io

        pdf.ln(3)
        pdf.image(io.BytesIO(image), w=min(width, 150))
        if caption:
            para(caption, 8, "I")
    return bytes(pdf.output())
