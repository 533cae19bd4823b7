"""Refined fields of a figure caption: magnification statements, stains (canonical names) and patient / case /
specimen identifiers (part of the caption splitter, issue 29, item 1).

:func:`extract_refined` gives the figure-level fields; the panel captions keep this text (the gold panel captions do).
:func:`strip_refined` removes it, to measure that choice (``pathasst-train data eval-split --strip-refined``, see
:mod:`pathasst.finetune.data.caption_eval`). Also the two text helpers the other caption modules share: ``_tokens``
(lower-cased letter/digit runs) and ``_tidy`` (whitespace and punctuation clean-up).
"""

from __future__ import annotations

import re

__all__ = ["extract_refined", "strip_refined"]


# --------------------------------------------------------------------------------------------------- text helpers
_TOKEN = re.compile(r"[^\W_]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


_SPACE_FIX = [(re.compile(r"\s+"), " "), (re.compile(r"\s+([,.;:)])"), r"\1"), (re.compile(r"\(\s+"), "("),
              (re.compile(r"^[\s,;:.)]+"), ""), (re.compile(r"([,;:])(?=[,;:.)])"), "")]


def _tidy(text: str) -> str:
    for pat, rep in _SPACE_FIX:
        text = pat.sub(rep, text)
    return text.strip()


# --------------------------------------------------------------------------------------------------- refinement
_MAG = [
    re.compile(r"(?:original\s+)?magnifications?\s*(?:of\s+(?:all\s+)?[a-z ]{1,20}?)?[:,]?\s*(?:is\s+|at\s+|=\s*)?"
               r"[x×*]\s?\d{1,4}(?:\s*(?:,|and|or|;)\s*(?:[a-z ]{1,20}?)?[x×*]?\s?\d{1,4}[x×*]?)*", re.I),
    re.compile(r"(?:original\s+)?magnifications?\s*(?:of\s+)?[:,]?\s*\d{1,4}\s?[x×*]"
               r"(?:\s*(?:,|and|or)\s*\d{1,4}\s?[x×*])*", re.I),
    re.compile(r"\d{1,4}(?:\.\d+)?\s?[x×*]\s*(?:total\s+)?(?:magnification|objectives?)", re.I),
    re.compile(r"(?:(?<![A-Za-z\d.*])|(?<=HE)|(?<=H&E))[x×]\s?\d{1,4}(?!\d|\.\d)"),
    re.compile(r"(?<![\d.*\w])\*\s?\d{1,4}(?!\d|\.\d)"),
    re.compile(r"(?<![\w.*])\d{1,4}(?:\.\d+)?\s?[x×](?![\w])"),
    re.compile(r"(?<![\w.*])\d{1,4}\s?\*(?=\s|[),;.&]|$)"),
]
_STAINS = [  # (canonical name, pattern); abbreviations are case-sensitive, words are not
    ("H&E", r"\bH\s*&\s*E\b|\bH\s+and\s+E\b|\bHandE\b|\bHE\b|(?i:ha?ematoxylin[\s/-]*(?:and\s+|&\s*)?eosin)"),
    ("hematoxylin", r"(?i:ha?ematoxylin(?![\s/-]*(?:and\s+|&\s*)?eosin))"),
    ("IHC", r"\bIHC\b|(?i:immunohisto\w*|immunostain\w*|immunolabel\w*|immunoreactiv\w*)"),
    ("immunofluorescence", r"(?i:immunofluorescen\w*)"),
    ("ISH", r"\bFISH\b|\bISH\b|(?i:\bin\s+situ\s+hybridi[sz]ation)"),
    ("Giemsa", r"(?i:\bgiemsa\b)"),
    ("toluidine blue", r"(?i:\btoluidine\s+blue\b)"),
    ("PAS", r"\bPAS\b|(?i:periodic\s+acid[\s-]+schiff)"),
    ("Perls Prussian blue", r"(?i:\bperl'?s\b|prussian\s+blue)"),
    ("Masson trichrome", r"(?i:\btrichrome\b)"),
    ("Papanicolaou", r"(?i:\bpapanicolaou\b)|\bPap\s+stain"),
    ("Diff-Quik", r"(?i:\bdiff[\s-]?quik\b)"),
    ("DAB", r"\bDAB\b|(?i:diaminobenzidine)"),
    ("DAPI", r"\bDAPI\b"),
    ("Alcian blue", r"(?i:\balcian\s+blue\b)"),
    ("Congo red", r"(?i:\bcongo\s+red\b)"),
    ("reticulin", r"(?i:\breticulin\b)"),
    ("Sirius red", r"(?i:\bsirius\s+red\b)"),
    ("silver", r"(?i:\bsilver\s+stain\w*)"),
]
_STAIN_RES = [(name, re.compile(pat)) for name, pat in _STAINS]
_IDENT = [
    re.compile(r"\b(?:patient|case|pt\.|subject|specimen|donor)\s*(?:no\.|number|#)?\s*#?\d+[A-Za-z]?\b"
               r"(?!\s*(?:years?|months?|weeks?|days?|h|hours?)\b)", re.I),
    re.compile(r"\b\d{1,3}[- ](?:year|yr)s?[- ]old(?:\s+(?:male|female|man|woman|boy|girl|patient|men|women))?\b",
               re.I),
    re.compile(r"\b(?:MRN|ID|accession)\s*(?:no\.?|#|:)?\s*[A-Z0-9][A-Z0-9-]{2,}\b"),
    re.compile(r"\b[A-Z]{1,4}[- ]?\d{2}[- ]\d{3,7}\b"),
    re.compile(r"\b[A-Z]{2,5}(?:\s[A-Z][a-z]{1,3})?\s\d{6,}\b"),
]
_STAIN_WORDS = re.compile(r"\b(?:stain(?:s|ed|ing)?|counterstain(?:ed)?|with|and|of|original|magnification|sections?|"
                          r"method|solution|x|by|the|was|were|used|performed)\b", re.I)


def _spans(patterns: list[re.Pattern[str]], text: str) -> list[tuple[int, int]]:
    """Non-overlapping match spans, earlier patterns first (linear in the text length)."""
    covered = bytearray(len(text) + 1)
    spans: list[tuple[int, int]] = []
    for pat in patterns:
        for m in pat.finditer(text):
            a, b = m.start(), m.end()
            if b > a and text[a:b].strip() and not covered[a] and not covered[b - 1]:
                covered[a:b] = b"\x01" * (b - a)
                spans.append((a, b))
    return sorted(spans)


def extract_refined(caption: str) -> dict[str, list[str]]:
    """Figure-level ``magnification`` (as written), ``stain`` (canonical names) and ``identifiers`` (as written)."""
    mags = [_tidy(caption[a:b]) for a, b in _spans(_MAG, caption)]
    stains = [name for name, pat in _STAIN_RES if pat.search(caption)]
    if "H&E" in stains and "hematoxylin" in stains and not re.search(r"counterstain", caption, re.I):
        stains.remove("hematoxylin")
    idents = [_tidy(caption[a:b]) for a, b in _spans(_IDENT, caption)]
    return {"magnification": list(dict.fromkeys(mags)), "stain": stains, "identifiers": list(dict.fromkeys(idents))}


def strip_refined(text: str) -> str:
    """A panel caption without the refined text: magnification and identifier spans, and stain-only sentences
    ('Hematoxylin-eosin staining.', '(H&E, x200)'). Used to measure whether refining should change the caption."""
    out, pos = [], 0
    for a, b in _spans(_MAG + _IDENT, text):
        out.append(text[pos:a])
        pos = b
    out.append(text[pos:])
    kept = []
    for sent in re.split(r"(?<=[.;])\s+", "".join(out)):
        rest = sent
        for _name, pat in _STAIN_RES:
            rest = pat.sub(" ", rest)
        rest = _STAIN_WORDS.sub(" ", rest)
        if _tokens(rest) or not _tokens(sent):
            kept.append(sent)
    cleaned = _tidy(" ".join(kept))
    return re.sub(r"\(\s*[,;:]*\s*\)", "", cleaned).strip()


def _is_stain_only(sentence: str) -> bool:
    """'Hematoxylin-eosin staining.', 'Perl's solution.', '(H&E, x200)'."""
    rest = sentence
    for _name, pat in _STAIN_RES:
        rest = pat.sub(" ", rest)
    if rest == sentence:
        return False
    for pat in _MAG:
        rest = pat.sub(" ", rest)
    return not _tokens(_STAIN_WORDS.sub(" ", rest))
