"""PDF figure parser for :mod:`pathasst.finetune.data.figures` (needs ``pypdf``, in the ``train`` extra).

Per page: the images are the page's image XObjects (and inline images) as ``pypdf`` lists them, in resource order;
the captions are the text paragraphs that start with a figure label ("Figure 2.", "Fig. 3:", "FIGURE 4"). The n-th
caption goes with the n-th image of the same page. When the counts differ, the unmatched images are kept with caption
"" and the unmatched captions with no image, each with a ``problem`` saying so.

Limits, stated honestly: no layout analysis. Paragraphs are cut where the vertical gap between text lines is over
1.5x the usual line spacing of the page, or where the text jumps upwards (a new column). Resource order is not
always reading order, so on a page with several figures the pairing can be wrong; vector drawings are not images
(their caption is kept with ``image: null``); logos and decorations count as images; a figure whose caption is on
the next page is not matched; scanned PDFs (one image per page, no text layer) give images without captions.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from pathasst.finetune.data.figures_xml import ParsedDoc, RawFigure, clean_text, split_label
from pathasst.finetune.data.readers import DataError, RecordProblem

__all__ = ["page_paragraphs", "parse_pdf"]


def _lines(page) -> list[tuple[str, float]]:
    """(text, y) of each text line of a page, in content-stream order."""
    lines: list[tuple[str, float]] = []
    cur: list[str] = []
    cur_y: list[float] = []

    def flush() -> None:
        text = clean_text("".join(cur))
        if text and cur_y:
            lines.append((text, cur_y[0]))
        cur.clear()
        cur_y.clear()

    def visit(text, cm, tm, _font, _size) -> None:
        for i, part in enumerate(text.split("\n")):
            if i:
                flush()
            if part.strip() and not cur_y:
                cur_y.append(cm[1] * tm[4] + cm[3] * tm[5] + cm[5])
            cur.append(part)

    page.extract_text(visitor_text=visit)
    flush()
    return lines


def page_paragraphs(page) -> list[str]:
    """Text paragraphs of a ``pypdf`` page (see the module docstring for how they are cut)."""
    lines = _lines(page)
    gaps = sorted(a[1] - b[1] for a, b in zip(lines, lines[1:]) if a[1] - b[1] > 0.5)
    spacing = gaps[len(gaps) // 4] if gaps else None
    paras: list[list[str]] = []
    prev_y: float | None = None
    for text, y in lines:
        gap = None if prev_y is None else prev_y - y
        new = gap is None or gap < -0.5 or (spacing is not None and gap > 1.5 * spacing)
        if new or not paras:
            paras.append([text])
        else:
            paras[-1].append(text)
        prev_y = y
    return [clean_text(" ".join(p)) for p in paras]


def parse_pdf(path: Path) -> ParsedDoc:
    """Figures (page images matched to "Figure N" paragraphs) of a PDF; DataError when the file cannot be read."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    doc = ParsedDoc("pdf", path.stem, [])
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise DataError(path, [RecordProblem("file", "encrypted PDF (needs a password)")])
        pages = list(reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, zlib.error) as exc:
        raise DataError(path, [RecordProblem("file", f"unreadable PDF: {type(exc).__name__}: {exc}")]) from None
    errors = (PyPdfError, ValueError, KeyError, TypeError, OSError, zlib.error, NotImplementedError)
    for pno, page in enumerate(pages, start=1):
        try:
            captions = [c for c in (split_label(p, strict=True) for p in page_paragraphs(page)) if c]
        except errors as exc:
            captions = []
            doc.problems.append(f"page {pno}: text not readable ({type(exc).__name__}: {exc})")
        try:
            images = [(Path(im.name).suffix.lower() or ".png", im.data) for im in page.images]
        except errors as exc:
            images = []
            doc.problems.append(f"page {pno}: images not readable ({type(exc).__name__}: {exc})")
        mismatch = f"page {pno}: {len(images)} image(s) but {len(captions)} figure caption(s)"
        for k in range(max(len(images), len(captions))):
            raw = RawFigure(f"p{pno}-{k + 1}", *(captions[k] if k < len(captions) else ("", "")))
            if len(images) != len(captions):
                raw.problems.append(mismatch)
            if k < len(images):
                ext, data = images[k]
                raw.image_ext, raw.read_image = ext, (lambda d=data: d)
            doc.figures.append(raw)
    return doc
