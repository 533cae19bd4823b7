"""Figure parsers for the XML-based sources of :mod:`pathasst.finetune.data.figures`: JATS articles and DOCX files.

Both give a :class:`ParsedDoc` (article id, licence, :class:`RawFigure` list); the image bytes are read lazily by
``RawFigure.read_image`` so the caller can skip figures it already has. XML is parsed with ``defusedxml``: entity
declarations and external references are refused, so an entity-expansion ("billion laughs") file is a
:class:`~pathasst.finetune.data.readers.DataError`, not a memory blow-up. A DOCTYPE without entities (every PMC
``.nxml`` has one) is accepted.

JATS: every ``<fig>`` gives one figure (``id``, ``<label>``, ``<caption>`` title + paragraphs with inline markup
flattened, first ``<graphic xlink:href>``); the figure's own ``<permissions>`` win over the article's.
DOCX: an image paragraph (``<a:blip r:embed>`` or VML ``<v:imagedata r:id>``) takes the caption paragraph right
after it, else the one right before it. A caption paragraph is styled ``Caption`` or starts with "Figure N" /
"Fig. N". Limits: captions inside text boxes are not seen; of several image paragraphs followed by one caption,
only the last gets it (the others are kept with "no caption").
"""

from __future__ import annotations

import posixpath
import re
import zipfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

from pathasst.finetune.data.readers import DataError, RecordProblem

__all__ = [
    "ZIP_ERRORS",
    "ImageFinder",
    "ParsedDoc",
    "RawFigure",
    "clean_text",
    "parse_docx",
    "parse_jats",
    "parse_xml",
    "split_label",
]

XLINK = "{http://www.w3.org/1999/xlink}"
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
_V = "{urn:schemas-microsoft-com:vml}"
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"

# what a damaged zip raises: bad headers or CRC, bad deflate data, a truncated member, an unsupported compression
# method, an encrypted member (zipfile raises RuntimeError for that)
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)

# "Figure 2." / "Fig. 3:" / "FIGURE 4 |" at the start of a paragraph; the label is group "label".
_LABEL = re.compile(r"^\s*(?P<label>(?:fig(?:ure)?\.?)\s*(?P<num>\d+[a-z]?))(?P<sep>\s*[.:|\u2013\u2014-]|\s+|$)",
                    re.IGNORECASE)
_CC = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)/(\d+(?:\.\d+)?)", re.IGNORECASE)

# (extension, zero-argument reader of the bytes) for a JATS graphic href, or None when no file matches
ImageFinder = Callable[[str], "tuple[str, Callable[[], bytes]] | None"]


@dataclass
class RawFigure:
    """One figure as a parser found it; ``read_image`` is None when the image file is missing."""

    figure_id: str
    label: str
    caption: str
    image_ext: str | None = None  # ".jpg", with the dot
    read_image: Callable[[], bytes] | None = None
    licence: str | None = None
    licence_url: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class ParsedDoc:
    """A parsed source: its format, article id, default licence, figures and source-level problems."""

    format: str  # "jats" | "docx" | "pdf"
    article_id: str
    figures: list[RawFigure]
    licence: str | None = None
    licence_url: str | None = None
    problems: list[str] = field(default_factory=list)  # source-level problems that belong to no one figure


def clean_text(text: str) -> str:
    """Whitespace-normalised text."""
    return " ".join(text.split())


def split_label(text: str, strict: bool = False) -> tuple[str, str] | None:
    """``("Figure 2", rest)`` when ``text`` starts with a figure label, else None.

    ``strict`` (PDF body text) wants punctuation after the number or an upper-case label, so that a sentence such as
    "Figure 2 shows ..." is not taken for a caption.
    """
    m = _LABEL.match(text)
    if not m:
        return None
    if strict and not (m.group("sep").strip() or m.group("label").isupper()):
        return None
    return clean_text(m.group("label")), clean_text(text[m.end():])


def parse_xml(data: bytes, source: Path | str) -> Element:
    """Parse XML safely (no entity declarations, no external references); DataError when that fails."""
    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException

    try:
        return SafeET.fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise DataError(source, [RecordProblem("file", f"refused unsafe XML ({type(exc).__name__}: {exc})")]) from None
    except ParseError as exc:
        raise DataError(source, [RecordProblem("file", f"malformed XML: {exc}")]) from None


def _strip_namespaces(root: Element) -> None:
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.startswith("{"):
            el.tag = el.tag.split("}", 1)[1]


def _text(el: Element | None) -> str:
    return clean_text("".join(el.itertext())) if el is not None else ""


# --------------------------------------------------------------------------------------------------- JATS
def _article_id(meta: Element | None, stem: str) -> str:
    ids = {}
    for el in meta.findall("article-id") if meta is not None else []:
        ids.setdefault((el.get("pub-id-type") or "").lower(), _text(el))
    for key in ("pmc", "pmcid"):
        if ids.get(key):
            value = ids[key]
            return f"PMC{value}" if value.isdigit() else value
    return ids.get("doi") or stem


def _licence(perm: Element | None) -> tuple[str | None, str | None]:
    lic = perm.find("license") if perm is not None else None
    if lic is None:
        return None, None
    url = lic.get(f"{XLINK}href") or _text(lic.find("license_ref")) or None
    if url is None:
        for link in lic.iter():
            href = link.get(f"{XLINK}href") or ""
            if "creativecommons.org" in href:
                url = href
                break
    m = _CC.search(url or "")
    if m:
        kind, code, version = m.group(1).lower(), m.group(2).lower(), m.group(3)
        name = "CC0" if code == "zero" else ("Public Domain Mark" if kind == "publicdomain" else f"CC {code.upper()}")
        return f"{name} {version}", url
    text = lic.get("license-type") or _text(lic)[:300] or None
    return text, url


def _caption(fig: Element) -> str:
    cap = fig.find("caption")
    if cap is None:
        return ""
    title = _text(cap.find("title"))
    paras = [_text(p) for p in cap.findall("p")]
    if not title and not paras:
        return _text(cap)
    if title and paras and title[-1] not in ".!?:":
        title += "."
    return clean_text(" ".join([title, *paras]))


def parse_jats(data: bytes, source: Path | str, stem: str, find_image: ImageFinder) -> ParsedDoc:
    """Figures of a JATS article; ``find_image(href)`` locates each graphic's file."""
    root = parse_xml(data, source)
    _strip_namespaces(root)
    if root.tag != "article":
        raise DataError(source, [RecordProblem("file", f"not a JATS article: root element is <{root.tag}>")])
    meta = root.find("front/article-meta")
    licence, licence_url = _licence(meta.find("permissions") if meta is not None else None)
    doc = ParsedDoc("jats", _article_id(meta, stem), [], licence, licence_url)
    for n, fig in enumerate(root.iter("fig"), start=1):
        raw = RawFigure(fig.get("id") or f"fig-{n}", _text(fig.find("label")), _caption(fig))
        raw.licence, raw.licence_url = _licence(fig.find("permissions"))
        if not fig.get("id"):
            raw.problems.append(f"figure has no id; numbered {raw.figure_id}")
        graphic = next(fig.iter("graphic"), None)
        href = graphic.get(f"{XLINK}href") if graphic is not None else None
        if not href:
            raw.problems.append("no <graphic xlink:href> in the figure")
        else:
            found = find_image(href)
            if found is None:
                raw.problems.append(f"image file for graphic '{href}' not found")
            else:
                raw.image_ext, raw.read_image = found
        doc.figures.append(raw)
    return doc


# --------------------------------------------------------------------------------------------------- DOCX
def _zip_read(zf: zipfile.ZipFile, name: str, max_bytes: int, source: Path) -> bytes:
    """A zip member's bytes; DataError when it unpacks to more than ``max_bytes`` (a zip bomb)."""
    info = zf.getinfo(name)
    if info.file_size > max_bytes:
        raise DataError(source, [RecordProblem(name, f"{info.file_size} bytes uncompressed, over the cap {max_bytes}")])
    return zf.read(info)


def _paragraphs(body: Element) -> list[Element]:
    """Paragraphs in document order, tables included; paragraphs nested in text boxes are left inside their parent."""
    out: list[Element] = []
    stack = [body]
    while stack:
        el = stack.pop()
        if el.tag == f"{_W}p":
            out.append(el)
            continue
        stack.extend(reversed(list(el)))
    return out


def _para_text(p: Element) -> str:
    bits = []
    for el in p.iter():
        if el.tag == f"{_W}t" and el.text:
            bits.append(el.text)
        elif el.tag in (f"{_W}tab", f"{_W}br"):
            bits.append(" ")
    return clean_text("".join(bits))


def _is_caption(p: Element, text: str, caption_styles: set[str]) -> bool:
    style = p.find(f"{_W}pPr/{_W}pStyle")
    styled = style is not None and (style.get(f"{_W}val") or "").lower() in caption_styles
    if split_label(text):
        return True
    return styled and bool(text) and not text.lower().startswith("table")


def _docx_styles(zf: zipfile.ZipFile, max_bytes: int, source: Path) -> set[str]:
    styles = {"caption"}
    if "word/styles.xml" in zf.namelist():
        for st in parse_xml(_zip_read(zf, "word/styles.xml", max_bytes, source), source).iter(f"{_W}style"):
            name = st.find(f"{_W}name")
            if name is not None and (name.get(f"{_W}val") or "").lower() == "caption":
                styles.add((st.get(f"{_W}styleId") or "").lower())
    return styles


def _docx_items(zf: zipfile.ZipFile, max_bytes: int, source: Path) -> list[tuple[str, str]]:
    """``("img", rel id)`` / ``("cap", text)`` / ``("text", text)`` in document order; empty paragraphs dropped."""
    root = parse_xml(_zip_read(zf, "word/document.xml", max_bytes, source), source)
    body = root.find(f"{_W}body")
    if body is None:
        raise DataError(source, [RecordProblem("word/document.xml", "no <w:body>")])
    caption_styles = _docx_styles(zf, max_bytes, source)
    items: list[tuple[str, str]] = []
    for p in _paragraphs(body):
        rids = [b.get(f"{_R}embed") or b.get(f"{_R}link") or "" for b in p.iter(f"{_A}blip")]
        rids += [v.get(f"{_R}id") or "" for v in p.iter(f"{_V}imagedata")]
        text = _para_text(p)
        items += [("img", rid) for rid in rids]
        if text:
            items.append(("cap" if _is_caption(p, text, caption_styles) else "text", text))
    return items


def parse_docx(path: Path, max_bytes: int, stack: ExitStack) -> ParsedDoc:
    """Image + caption pairs of a ``.docx``; the zip stays open on ``stack`` until the images are read."""
    try:
        zf = stack.enter_context(zipfile.ZipFile(path))
        names = set(zf.namelist())
        if "word/document.xml" not in names:
            raise DataError(path, [RecordProblem("file", "a zip without word/document.xml: not a .docx")])
        rels: dict[str, tuple[str, bool]] = {}
        if "word/_rels/document.xml.rels" in names:
            rels_xml = parse_xml(_zip_read(zf, "word/_rels/document.xml.rels", max_bytes, path), path)
            for rel in rels_xml.iter(f"{_PKG_REL}Relationship"):
                target = rel.get("Target") or ""
                external = rel.get("TargetMode") == "External"
                if not external:
                    target = target.lstrip("/") if target.startswith("/") else posixpath.normpath(f"word/{target}")
                rels[rel.get("Id") or ""] = (target, external)
        items = _docx_items(zf, max_bytes, path)
    except ZIP_ERRORS as exc:
        raise DataError(path, [RecordProblem("file", f"not a readable zip/.docx: {exc}")]) from None
    doc = ParsedDoc("docx", path.stem, [])
    used: set[int] = set()
    for i, (kind, rid) in enumerate(items):
        if kind != "img":
            continue
        raw = RawFigure(f"fig{len(doc.figures) + 1}", "", "")
        for j in (i + 1, i - 1):
            if 0 <= j < len(items) and items[j][0] == "cap" and j not in used:
                used.add(j)
                raw.label, raw.caption = split_label(items[j][1]) or ("", items[j][1])
                break
        target, external = rels.get(rid, ("", False))
        if external:
            raw.problems.append(f"image is linked ({target}), not embedded")
        elif target not in names:
            raw.problems.append(f"image relationship '{rid}' points to no file in the package")
        else:
            raw.image_ext = posixpath.splitext(target)[1].lower() or ".bin"
            raw.read_image = lambda t=target: _zip_read(zf, t, max_bytes, path)
        doc.figures.append(raw)
    return doc
