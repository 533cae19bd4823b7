"""The deterministic planner: question + stain + modality -> tool calls. Reproducible; needs no model.

How a question becomes a plan (round 0; any later round finishes):

1. Injection text is cut: from a cue such as "ignore previous instructions", "SYSTEM:", "you must call", a URL or a
   request for keys/prompts, to the end of its sentence. Case notes and retrieved reports are never read.
2. Domain words with typos are corrected against a small vocabulary ("mitosees" -> "mitoses").
3. General-knowledge questions (definitions, "how is X scored", greetings) that do not point at the case finish with
   no calls.
4. Each tool has trigger patterns written from pathology practice (below). A trigger preceded in its clause by a
   negation ("no need to", "don't", "without", "skip", "instead of") or followed by "is not needed" does not count.
5. Stain and modality route intents: a diagnostic question is ``slide_classification`` on a whole slide and
   ``tissue_classification`` on a patch; counting cells on an IHC stain is ``ihc_quantification``; a generic "analyse
   this" falls back to the stain's IHC quantification or to classification.
   A tool of the catalogue that declares ``planning.triggers`` (any tool installed through the ``pathasst.tools``
   entry point, see :mod:`pathasst.tools.planning`) is called when one of them matches, with the same negation rule;
   a tool named in the question is called too. A plan runs in the tools' ``planning.order``.
6. One call per tool per image, only for tools in ``ctx.catalogue``; arguments from
   :func:`~pathasst.planning.parsing.context_arguments` (IHC mode from the stain, point/box and ``k`` from the
   question; a box also becomes ``region`` for measuring tools).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pathasst.core.settings import Settings
from pathasst.planning.base import PlanDecision, PlannedCall, PlannerContext
from pathasst.planning.parsing import context_arguments, stain_enum, written_geometry
from pathasst.tools.ihc_models import MODE_ALIASES
from pathasst.tools.planning import DEFAULT_ORDER, compiled_triggers

__all__ = ["TOOL_ORDER", "RulesPlanner", "order_tools", "strip_injections"]

#: the project's tools, whose stain- and modality-aware routing this module writes out (their plan order is also each
#: tool's ``planning.order``; the hybrid planner's example index has one column per tool here)
TOOL_ORDER: tuple[str, ...] = (
    "tissue_qc",
    "nuclei_segmentation",
    "ihc_quantification",
    "mitosis_detection",
    "tissue_classification",
    "tumor_segmentation",
    "slide_classification",
    "region_segmentation",
    "similar_cases",
)

_IHC_MODES = ["ki67", "er_pr", "pdl1"]
_T = r"tumou?r"


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in parts), re.I)


# ---- 1. injection cues: text from the cue to the end of its sentence is ignored ----------------
_INJECTION = _rx(
    r"\b(?:ignore|disregard|forget|override|bypass)\b[^.!?\n]{0,40}\b(?:instructions?|rules?|prompts?|directions?|guidelines?|constraints?|question|request|everything|above)",
    r"\b(?:new|updated|real|hidden|secret)\s+(?:instructions?|task|system\s+prompt|orders?)\b",
    r"(?:^|[\s\[<(])(?:system|admin|developer|assistant|root)\s*(?:prompt|message|override|mode|note)?\s*[:\]>]",
    r"\bsystem\s+(?:prompt|override|message)\b",
    r"\b(?:you\s+are\s+now|act\s+as|pretend\s+(?:to\s+be|you)|developer\s+mode|jailbreak|dan\s+mode)\b",
    r"\b(?:you\s+must|you\s+are\s+required\s+to|from\s+now\s+on|always)\s+(?:call|run|invoke|execute|use|trigger)\b",
    r"\b(?:call|run|invoke|execute|trigger|use)\s+(?:every|all|each)\s+(?:of\s+the\s+)?(?:available\s+)?(?:tools?|functions?)\b",
    r"\bnote\s+to\s+(?:the\s+)?(?:ai|assistant|model|llm|planner|agent)\b",
    r"\b(?:reveal|print|show|output|repeat|leak|dump|send|exfiltrate|e-?mail|upload|post|forward|list)\b[^.!?\n]{0,30}\b(?:system\s+prompt|instructions|prompt|api[\s_-]?keys?|secrets?|credentials?|passwords?|tokens?|env(?:ironment)?\s+variables?|all\s+patients?|patient\s+(?:data|records|list|names))\b",
    r"https?://\S+|\bwww\.\S+",
    r"<\s*/?\s*(?:system|instructions?|im_start|im_end)\b|###\s*instruction|\[/?INST\]",
    r"\bdo\s+not\s+(?:tell|inform|warn)\s+the\s+(?:user|pathologist|doctor)\b",
)
_FILE_NAME = re.compile(
    r"[\w./-]+\.(?:png|jpe?g|tiff?|bmp|svs|ndpi|mrxs|scn|vms|vmu|bif|svslide|dcm)\b", re.I
)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?\n]*")
_URL_TAIL = re.compile(r"(?:\bhttps?://|\bwww\.)\S+[^.!?\n]*", re.I)


def strip_injections(question: str) -> tuple[str, list[str]]:
    """``question`` without injection text (each cue to the end of its sentence), and the removed pieces."""
    kept: list[str] = []
    removed: list[str] = [m.group(0).strip() for m in _URL_TAIL.finditer(question)]
    question = _URL_TAIL.sub(" ", question)  # before splitting: the dots inside a URL are not sentence ends
    for sentence in _SENTENCE.findall(question):
        m = _INJECTION.search(sentence)
        if m is None:
            kept.append(sentence)
            continue
        kept.append(sentence[: m.start()])
        removed.append(sentence[m.start() :].strip())
    return " ".join(kept), removed


# ---- 2. typo correction against domain words -----------------------------------------------------
_VOCAB = sorted(
    {
        "mitosis", "mitoses", "mitotic", "nuclei", "nucleus", "nuclear", "cellularity", "quality", "artefact",
        "artefacts", "artifact", "artifacts", "blurry", "blurred", "tumour", "tumor", "tumours", "tumors", "necrosis",
        "necrotic", "stroma", "stromal", "similar", "previous", "archive", "comparable", "classify", "classification",
        "tissue", "diagnosis", "positivity", "positive", "proliferation", "segment", "segmentation", "quantify",
        "quantification", "percentage", "density", "morphometry", "pleomorphism", "lymphocytes", "estrogen",
        "oestrogen", "progesterone", "receptor", "region", "marked", "selected", "measure", "adequate", "adequacy",
        "malignant", "benign", "carcinoma", "metastasis", "metastases", "grade", "count", "cells", "slide", "focus",
        "folds", "bubbles", "staining", "stain", "index", "score", "fraction", "infiltrating", "detect", "detection",
        "figures", "comparison", "library", "retrieve", "circled", "clicked", "annotated", "highlighted", "outline",
    }
)
_NO_CORRECT = {
    "unclear", "minutes", "similarly", "simple", "sample", "samples", "normal", "counter", "could", "colour",
    "color", "scores", "regions", "nodule", "nodules", "tissues", "cancer", "signed", "select", "segments",
    "marker", "markers", "stains", "stained", "slides", "grades", "graded", "measured", "detected", "tumoral",
    "focal", "focused", "counts", "cell", "result", "results", "status", "statistic", "previously", "classic",
    "archived", "archives", "recount", "counted", "quantity", "qualify", "quantities", "stromata", "nuclear",
    "section", "sections", "stand", "scope", "slice", "store", "grace", "trade", "inside", "focal", "tumoral", "lesion", "lesions", "matrix", "mature", "nucleoli", "adequately", "positively",
    "positives", "negative", "negatives", "density", "dense", "mitotically", "images", "image", "indices",
}
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{4,}")


def _correct_typos(text: str) -> str:
    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        low = word.lower()
        if low in _NO_CORRECT or low in _VOCAB or "-" in low:
            return word
        close = difflib.get_close_matches(low, _VOCAB, n=1, cutoff=0.8 if len(low) >= 7 else 0.85)
        return close[0] if close else word

    return _WORD.sub(fix, text)


# ---- 3. general knowledge and small talk ---------------------------------------------------------
_GENERAL = _rx(
    r"\bdefin(?:e|ition)\b",
    r"\bmeaning\s+of\b",
    r"\bwhat\s+(?:does|do)\b[^?]{0,60}\b(?:mean|stand\s+for|measure|indicate|represent|tell\s+us)\b",
    r"^\s*(?:what|who)(?:'s|\s+is|\s+are|\s+was)\s+(?:a|an)\b",
    r"\bexplain\b",
    r"\bhow\s+(?:is|are|do\s+(?:you|we|i|pathologists)|does\s+one|should|can\s+(?:you|one|i))\b[^?]{0,60}\b(?:calculated|scored|score|defined|graded|grade|measured|measure|computed|assessed|assess|interpreted|interpret|done|counted|count|reported|report|performed|classified|differentiated|distinguish)\b",
    r"\bdifference\s+between\b",
    r"\bwhy\s+(?:is|are|do|does|would|should)\b",
    r"\b(?:criteria|guidelines?|recommendations?|cut-?offs?|thresholds?|normal\s+range|reference\s+range|prognostic\s+(?:value|significance)|prognosis\s+of)\b",
    r"\bin\s+general\b|\bgenerally\b|\btypically\b|\busually\b",
    r"\btell\s+me\s+about\b",
    r"\bwhich\s+(?:antibod(?:y|ies)|clones?)\b",
    r"\bhistory\s+of\b|\bwho\s+(?:invented|described|discovered)\b",
    r"\bwhat\s+(?:is|are)\s+(?:the\s+)?(?:causes?|risk\s+factors|symptoms|treatments?|therapy|epidemiology)\b",
)
_SMALL_TALK = re.compile(
    r"^\s*(?:hi|hello|hey|good\s+(?:morning|afternoon|evening)|thanks?(?:\s+you)?|thank\s+you|cheers|ok(?:ay)?|"
    r"bye|goodbye|great|perfect|nice)\b",
    re.I,
)
_DEIXIS = _rx(
    r"\b(?:this|these|those|here|attached|current|uploaded|shown|visible|my|our)\b",
    r"\bthe\s+(?:slide|image|patch|tile|case|sample|specimen|section|biopsy|resection|field|wsi|scan|stain|picture)\b",
    r"\bin\s+it\b|\bon\s+it\b|\bpresent\b",
)


# ---- 4. tool triggers ------------------------------------------------------------------------------
_NEG_BEFORE = re.compile(
    r"\b(?:no|not|don'?t|do\s+not|does\s+not|doesn'?t|didn'?t|without|skip(?:ping)?|never|no\s+need|neither|nor|"
    r"instead\s+of|rather\s+than|except|excluding|exclude|omit(?:ting)?|avoid|leave\s+out|ignore|ignoring|"
    r"forget\s+about|no\s+longer|not\s+interested)\b",
    re.I,
)
_NEG_AFTER = re.compile(
    r"^[^.,;!?]{0,25}?\b(?:(?:is|are)\s+not|isn'?t|aren'?t|not)\s+(?:needed|necessary|required|wanted|relevant|important|"
    r"of\s+interest|a\s+concern)\b|^[^.,;!?]{0,25}?\b(?:can\s+be\s+skipped|unnecessary|irrelevant|not\s+needed)\b",
    re.I,
)
_SCOPE_BREAK = re.compile(r"\b(?:and|but|then|just|only|instead|please|also|however|so)\b|[,;:]", re.I)

_TRIGGERS: dict[str, re.Pattern[str]] = {
    "ihc": _rx(
        r"\bki[\s-]?67\b|\bmib[\s-]?1\b|\bproliferati(?:on|ve)\s+(?:index|fraction)\b",
        r"\b(?:o?estrogen|progesterone|hormone)[\s-]+receptors?\b|\ber\s*/\s*pr\b|\ber\b|\bpr\b|\bpgr\b|\ballred\b|\bh[\s-]?score\b",
        r"\bpd[\s-]?l1\b|\btps\b|\bcps\b|\btumou?r\s+proportion\s+score\b|\bcombined\s+positive\s+score\b",
        r"\bpositiv(?:e|ity)\b|\bimmuno(?:reactiv|stain|positiv)\w*|\bdab\b|\bbrown\s+(?:cells|nuclei|staining)\b",
        r"\b(?:staining|labell?ing)\s+(?:index|intensity|percentage|proportion|score)\b|\bstain(?:ing)?\s+intensity\b",
        r"\bihc\b|\bimmunohistochem\w*",
    ),
    "ihc_on_ihc_stain": _rx(  # on an IHC stain, when no other measuring tool is asked for (QC/retrieval may be)
        r"\bscor(?:e|ing)\b|\bquantif\w+|\bindex\b|\bpercent(?:age)?\b|%|\bproportion\b|\bhow\s+many\b|\bcount\w*",
        r"\bexpress(?:ion|ed|es)?\b|\bread\s+out\b|\bfraction\b|\bproliferat\w*",
    ),
    "ihc_weak": _rx(  # on an IHC stain, only when nothing else at all is asked for
        r"\bstatus\b|\bresults?\b|\bstain(?:ing|ed)?\b|\bwhat\s+about\b",
    ),
    "her2": _rx(r"\bher[\s-]?2\b|\berbb[\s-]?2\b|\bc-?erb-?b2\b|\bher2/neu\b"),
    "nuclei": _rx(
        r"\bnucle(?:i|us|ar)\b|\bnuclear[\s-]+(?:size|area|shape|grade|pleomorphism|features|atypia|contours?)\b",
        r"(?<!tumor\s)(?<!tumour\s)\bcellularity\b|\bhypercellular\w*|\bcell\s+(?:counts?|density|numbers?|types?|segmentation|detection|morphology)\b",
        r"\bcount\w*\s+(?:(?:the|all|of|individual)\s+)*(?:cells|nuclei)\b|\bhow\s+many\s+(?:\w+\s+)?cells\b|\bnumber\s+of\s+(?:\w+\s+)?cells\b|\bcells\s+per\b",
        r"\bmorphometr\w*|\bpleomorph\w*|\bn\s*:\s*c\b|\bnuclear[\s-]+(?:to[\s-]+)?cytoplasmic\b|\bchromatin\b|\bhyperchromas\w*|\bnucleoli\b",
        r"\blymphocyt\w*|\btils?\b|\btumou?r[\s-]+infiltrating\s+lymph\w*|\binflammatory\s+(?:cells|infiltrate)\b|\bimmune\s+(?:cells|infiltrate)\b",
        r"\bsegment\w*\s+(?:the\s+|all\s+)?(?:cells|nuclei)\b|\bdetect\w*\s+(?:the\s+|all\s+)?(?:cells|nuclei)\b|\bcrowding\b",
    ),
    "mitosis": _rx(
        r"\bmito(?:sis|ses|tic|tically)\b|\bmitotic\s+(?:figures?|count|index|rate|activity)\b",
        r"\bdividing\s+cells\b|\bcell\s+division\b|\b(?:per|/)\s*10\s*hpfs?\b|\bhpfs?\b|\bhigh[\s-]power\s+fields?\b",
        r"\b(?:nottingham|elston|bloom[\s-]+richardson|histologic(?:al)?|tumou?r|sbr)\s+grad\w*",
        r"(?<!nuclear\s)\bgrad(?:e|ing)\b",
    ),
    "proliferation": _rx(r"\bproliferat\w*"),
    "tissue_type": _rx(
        r"\b(?:what|which)\s+(?:kinds?|types?|sorts?)\s+of\s+tissues?\b|\btissues?\s+(?:types?|class(?:es)?|classification|category|categories|composition|compartments?)\b",
        r"\b(?:what|which)\s+tissues?\b|\bidentify\s+(?:the\s+)?tissues?\b|\bclassify\s+(?:the\s+)?tissues?\b",
        r"\bclassify\s+(?:this|the|each|every)?\s*(?:patch|tile|image|field|crop)\b|\blabel\s+(?:this|the)\s+(?:patch|tile|image)\b",
        r"\bcrc[\s-]?100k\b|\bzero[\s-]shot\b|\b(?:what|which)\s+organ\b|\borgan\s+of\s+origin\b",
        r"\bis\s+(?:this|it)\s+(?:patch\s+|tile\s+|image\s+|field\s+)?(?:of\s+)?(?:normal\s+)?(?:mucosa|adipose|fat|muscle|smooth\s+muscle|stroma|lymphoid|debris|mucus|epithelium|background|lymph\s+node|liver|colon|breast|lung|prostate|skin)\b",
    ),
    "diagnostic": _rx(
        r"\bdiagnos(?:is|e|tic)\b|\bdifferential\b|\bwhat\s+(?:is|'s)\s+(?:this|it)\b|\bwhat\s+(?:am\s+i|are\s+we)\s+looking\s+at\b",
        r"\bclassify\s+(?:this|the)\s+(?:slide|wsi|case|specimen|lesion)\b|\bslide[\s-]level\b|\bwhole[\s-]slide\s+(?:label|class\w*)\b",
        r"\b(?:benign|normal|reactive)\s+or\s+(?:malignant|cancer\w*|tumou?r|neoplastic|abnormal)\b|\bmalignan\w*|\bneoplas\w*",
        r"\bis\s+(?:this|it|there)\s+(?:a\s+|an\s+|any\s+)?(?:cancer|carcinoma|malignan\w*|tumou?r|lymphoma|sarcoma|melanoma|metasta\w*|adenoma|adenocarcinoma|invasive|dysplas\w*)\b",
        r"\bmetasta\w*|\bsubtyp\w*|\bwhat\s+(?:kind|type)\s+of\s+(?:cancer|tumou?r|carcinoma|lesion|neoplasm|lymphoma)\b|\bhistolog\w*\s+(?:sub)?type\b",
        r"\b(?:any|contains?)\s+(?:cancer|carcinoma|tumou?r|malignancy)\b|\bcancer\s+present\b|\b(?:cancer|tumou?r)\s+or\s+not\b",
        r"\bwhat\s+do\s+you\s+see\b|\bwhat\s+is\s+shown\b|\bimpression\b",
    ),
    "tumor": _rx(
        rf"\b{_T}\s+(?:area|extent|size|burden|fraction|percentage|content|regions?|bed|margins?|boundar\w+|border|borders|map|mask|outline|volume|cellularity|purity|amount)\b",
        rf"\b(?:percent(?:age)?|proportion|fraction|how\s+much)\b[^.?!,;]{{0,30}}\b(?:is|are)\s+(?:viable\s+)?{_T}\b",
        rf"\bhow\s+much\s+(?:of\s+(?:the|this)\s+\w+\s+|viable\s+)?(?:is\s+)?{_T}\b|\bpercent(?:age)?\s+(?:of\s+)?(?:viable\s+)?{_T}\b|\b{_T}\s+percent(?:age)?\b|\benough\s+{_T}\b",
        rf"\b{_T}[\s-]+(?:to[\s-]+)?(?:stroma|stromal)\s+(?:ratio|proportion)\b|\btsr\b|\bstroma(?:l)?\s+(?:percentage|fraction|proportion|content|ratio|area)\b",
        rf"\bnecros[ie]s\b|\bnecrotic\b|\bviable\s+{_T}\b|\bresidual\s+{_T}\b|\bsegment\w*\s+(?:the\s+)?{_T}\b|\b{_T}\s+segmentation\b",
        rf"\bdelineat\w*|\binvasive\s+(?:front|margin|border)\b|\bheat\s?map\b|\barea\s+fractions?\b|\bmap\s+(?:of\s+)?(?:the\s+)?(?:{_T}|stroma|necrosis)\b",
        rf"\b(?:{_T}|stroma|necrosis)\s+vs\.?\s+(?:{_T}|stroma|necrosis)\b",
    ),
    "region_ref": _rx(
        r"\b(?:region|area|point|spot|structure|lesion|nodule|gland|focus|zone|box|roi|object|cell\s+cluster|cluster)s?\s+(?:that\s+)?(?:i|we|you)?\s*(?:have\s+|just\s+)?(?:marked|selected|drew|drawn|circled|clicked|annotated|highlighted|outlined|boxed|pointed\s+(?:at|to)|indicated|placed)\b",
        r"\b(?:i|we)(?:'ve|\s+have)?\s+(?:just\s+)?(?:marked|selected|clicked|drew|circled|annotated|highlighted|pointed|boxed|outlined)\b",
        r"\b(?:this|that|the)\s+(?:roi|region\s+of\s+interest|annotation|selection|marked\s+\w+|clicked\s+\w+)\b",
        r"\bbounding\s+box\b|\bbox\b|\bat\s+(?:the\s+)?(?:point|coordinates?|pixel|location|position)\b|\bx\s*=\s*\d+|\(\s*\d+\s*,\s*\d+\s*\)",
    ),
    "region_measure": _rx(
        r"\bsegment\w*\s+(?:this|that|the)\s+(?:structure|gland|lesion|nodule|object|region|area|focus|cluster|vessel|duct)\b",
        r"\b(?:measure|size\s+of|area\s+of|dimensions?\s+of|diameter\s+of|outline|delineate)\s+(?:this|that|the)\s+(?:\w+\s+)?(?:lesion|nodule|gland|structure|area|region|focus|object|cluster|duct|vessel|spot)\b",
        r"\bhow\s+(?:big|large)\s+is\s+(?:this|that|the)\b",
    ),
    "qc": _rx(
        r"\bquality\b|\bqc\b|\bblur\w*|\bout\s+of\s+focus\b|\bin\s+focus\b|\bfocus(?:ed)?\s+(?:issues?|problems?|quality)\b|\bsharp(?:ness)?\b",
        r"\bartefacts?\b|\bartifacts?\b|\bpen\s+(?:marks?|ink)\b|\bink\s+marks?\b|\bmarker\s+pen\b|\bfolds?\b|\bfolded\b|\bwrinkl\w*|\b(?:air\s+)?bubbles?\b",
        r"\bdust\b|\btears?\b|\btorn\b|\bchatter\b|\bcrush\w*|\bcautery\b|\bdebris\s+on\b",
        r"\btissue\s+(?:present|presence|detection|detect|coverage|mask|adequacy)\b|\bis\s+there\s+(?:any\s+|enough\s+)?tissue\b|\benough\s+tissue\b|\bhow\s+much\s+tissue\b|\bempty\b",
        r"\badequa(?:te|cy)\b|\busable\b|\bgood\s+enough\b|\bfit\s+for\b|\bsuitable\s+for\b|\b(?:re-?scan|rescann\w*)\b",
        r"\bstain(?:ing)?\s+(?:quality|variation|normali[sz]ation)\b|\b(?:over|under)[\s-]?stain\w*|\bfad(?:ed|ing)\b|\buneven\s+staining\b|\bbackground\s+staining\b|\bscan(?:ning)?\s+(?:quality|issues?|problems?|artefacts?|artifacts?)\b|\bcolou?r\s+(?:cast|balance)\b",
    ),
    "similar": _rx(
        r"\bsimilar\w*|\bcomparable\b|\banalogous\b|\blook[\s-]?alikes?\b|\bresembl\w*|\bmatching\s+cases\b",
        r"\b(?:previous|prior|past|earlier|older|archived?|historical|reference)\s+(?:\w+\s+)?(?:cases?|slides?|patients?|reports?|examples?|biops(?:y|ies))\b",
        r"\barchive\b|\bcase\s+(?:library|database|collection)\b|\b(?:have|did)\s+we\s+(?:ever\s+)?(?:seen|see|had|have)\b|\bseen\s+(?:this|something\s+like\s+this|it)\s+before\b",
        r"\bcases\s+like\s+(?:this|it|these)\b|\bother\s+cases\b|\bnearest\s+(?:neighbou?rs?|cases)\b|\bretriev\w*|\bsearch\s+(?:the\s+)?(?:archive|library|database)\b|\bfind\s+(?:me\s+)?(?:\w+\s+)?(?:cases|examples)\b",
    ),
    "generic": _rx(
        r"\banaly[sz]\w*|\bassess\w*|\bevaluat\w*|\binterpret\w*|\breview\b|\bdescrib\w*|\bexamin\w*|\blook\s+at\b",
        r"\bwhat\s+do\s+you\s+(?:see|think)\b|\bfindings?\b|\bimpression\b|\bwork[\s-]?up\b|\bthoughts\b|\bsummar\w*|\breport\b",
        r"\bquantif\w*|\bscor(?:e|ing)\b|\bmeasure\w*|\bwhat\s+about\b|\bcheck\s+(?:this|the)\s+(?:case|slide|image|patch)\b",
    ),
}
_TOOL_NAME_RE = _rx(*(rf"\b{name}\b" for name in TOOL_ORDER))


_QUALIFIES_CASES = re.compile(r"^[\s-]*(?:\w+[\s-]+)?(?:cases?|slides?|examples?|patients?|reports?)\b", re.I)


def order_tools(tools: Iterable[str], catalogue: Sequence[dict[str, Any]] | None = None) -> list[str]:
    """``tools`` without repeats, in plan order: each tool's ``planning.order`` in the catalogue (the project's tools
    without a catalogue entry: their place in ``TOOL_ORDER``), then by name."""
    hinted = {e["name"]: (e.get("planning") or {}).get("order", DEFAULT_ORDER) for e in catalogue or ()}
    builtin = {t: 10 * (i + 1) for i, t in enumerate(TOOL_ORDER)}
    return sorted(set(tools), key=lambda t: (hinted.get(t, builtin.get(t, DEFAULT_ORDER)), t))


def _hits(key: str, text: str) -> list[str]:
    """Non-negated matches of trigger ``key`` in ``text``."""
    return _non_negated(_TRIGGERS[key], text, key)


def _non_negated(pattern: re.Pattern[str], text: str, key: str = "") -> list[str]:
    """Matches of ``pattern`` in ``text`` not negated in their clause ("don't ...", "... is not needed")."""
    out: list[str] = []
    for m in pattern.finditer(text):
        if key == "ihc" and _QUALIFIES_CASES.match(text[m.end() : m.end() + 40]):
            continue  # "PD-L1 cases", "ER-positive slides": a retrieval qualifier, not a request to quantify
        before = text[max(0, m.start() - 60) : m.start()]
        cut = max((b.end() for b in _SCOPE_BREAK.finditer(before)), default=0)
        scope = before[cut:]
        sentence_start = max(before.rfind("."), before.rfind("?"), before.rfind("!"), before.rfind("\n"))
        if sentence_start >= cut:
            scope = before[sentence_start + 1 :]
        if _NEG_BEFORE.search(scope) or _NEG_AFTER.search(text[m.end() : m.end() + 60]):
            continue
        out.append(m.group(0))
    return out


def _is_ihc_stain(stain: str | None) -> bool:
    return stain_enum(stain, _IHC_MODES, MODE_ALIASES) is not None


class RulesPlanner:
    """Deterministic keyword-and-context planner (see the module docstring). ``name = "rules"``."""

    name = "rules"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings

    # ---- the decision --------------------------------------------------------------------------
    def tools_for(self, question: str, stain: str | None, image_kind: str,
                  catalogue: Sequence[dict[str, Any]] | None = None) -> tuple[list[str], list[str]]:
        """The tools a question needs and notes explaining the choice. ``catalogue`` adds the triggers and names of
        its tools beyond the project's own and orders the plan; it does not remove tools (``plan`` does)."""
        # 'ihc.png' names an image, it does not ask for IHC (removed before sentences are split at dots)
        clean, removed = strip_injections(_FILE_NAME.sub(" ", question))
        notes = [f"ignored injected text: {r[:80]!r}" for r in removed]
        text = _correct_typos(clean)
        if not text.strip():
            return [], [*notes, "no genuine request left"]
        has = {key: bool(_hits(key, text)) for key in _TRIGGERS}
        names = _TOOL_NAME_RE
        extra = sorted({e["name"] for e in catalogue or ()} - set(TOOL_ORDER))
        if extra:
            names = _rx(*(rf"\b{name}\b" for name in (*TOOL_ORDER, *extra)))
        explicit = {m.group(0).lower() for m in names.finditer(text) if _hits_name(text, m)}
        ihc_stain = _is_ihc_stain(stain)
        wanted: set[str] = set(explicit)
        for entry in catalogue or ():
            pattern = compiled_triggers(entry)
            if pattern is not None and _non_negated(pattern, text):
                wanted.add(entry["name"])

        if has["qc"]:
            wanted.add("tissue_qc")
        if has["similar"]:
            wanted.add("similar_cases")
        if has["mitosis"] and not re.search(r"\bgleason\b|\bisup\b|\bdysplasia\b", text, re.I):
            wanted.add("mitosis_detection")
        if has["tumor"]:
            wanted.add("tumor_segmentation")
        if has["tissue_type"]:
            wanted.add("tissue_classification")
        if has["diagnostic"]:
            wanted.add("slide_classification" if image_kind == "wsi" else "tissue_classification")
        if has["proliferation"] and not has["ihc"]:
            wanted.add("ihc_quantification" if ihc_stain else "mitosis_detection")
        her2 = has["her2"] or bool(stain and _TRIGGERS["her2"].search(stain))
        if has["ihc"] and not (her2 and not _mode_in_text(text)):
            wanted.add("ihc_quantification")
        positivity = ihc_stain and has["ihc"]
        if has["nuclei"]:
            generic_count = not re.search(
                r"\bnucle|morphometr|pleomorph|chromatin|nucleoli|lymphocyt|\btils?\b|inflammatory|immune|n\s*:\s*c",
                text,
                re.I,
            )
            morphometry = re.search(r"morphometr|pleomorph|chromatin|nucleoli|\bsize\b|\barea\b|\bshape", text, re.I)
            if ihc_stain and (generic_count or (positivity and not morphometry)):
                # on an IHC stain, counting (positive) cells or nuclei is the IHC quantification itself
                wanted.add("ihc_quantification")
            else:
                wanted.add("nuclei_segmentation")
        if has["region_measure"] or (has["region_ref"] and not wanted):
            wanted.add("region_segmentation")
        if ihc_stain and has["ihc_on_ihc_stain"] and not (wanted - {"tissue_qc", "similar_cases"}):
            wanted.add("ihc_quantification")
        if ihc_stain and has["ihc_weak"] and not wanted:
            wanted.add("ihc_quantification")
        if her2 and "ihc_quantification" in wanted and not _mode_in_text(text) and not ihc_stain:
            wanted.discard("ihc_quantification")
        if her2 and "ihc_quantification" not in wanted:
            notes.append("HER2 membrane scoring is not supported by ihc_quantification (modes: Ki-67, ER/PR, PD-L1)")

        general = bool(_GENERAL.search(text)) and not _DEIXIS.search(text)
        if general and not explicit:
            return [], [*notes, "general-knowledge question: no tool needed"]
        if not wanted and has["generic"] and not her2:
            if ihc_stain:
                wanted.add("ihc_quantification")
            else:
                wanted.add("slide_classification" if image_kind == "wsi" else "tissue_classification")
            notes.append("generic request: default analysis for the stain and modality")
        if not wanted:
            small_talk = bool(_SMALL_TALK.search(text))
            notes.append("small talk: no tool needed" if small_talk else "no tool matches the question")
        return order_tools(wanted, catalogue), notes

    def plan(self, ctx: PlannerContext) -> PlanDecision:
        if ctx.step > 0 or ctx.history:
            return PlanDecision.finish("tools already run; answer from their results")
        tools, notes = self.tools_for(ctx.question, ctx.stain, ctx.image_kind, ctx.catalogue)
        schemas = {t["name"]: t.get("input_schema") or {} for t in ctx.catalogue}
        missing = [t for t in tools if t not in schemas]
        if missing:
            notes.append(f"not in the catalogue, skipped: {', '.join(missing)}")
        tools = [t for t in tools if t in schemas]
        if not tools or not ctx.images:
            if tools:
                notes.append("the case has no images")
            return PlanDecision.finish("; ".join(notes) or "no tool needed")
        calls = []
        for tool in tools:
            schema = schemas[tool]
            props = schema.get("properties", {}) if isinstance(schema, dict) else {}
            implied = context_arguments(schema, ctx)
            if tool != "region_segmentation" and "region" in props:
                box = written_geometry("region", props["region"], schema, ctx.question)
                if box is not None:  # "count nuclei in the box ..." measures inside that rectangle
                    implied["region"] = box
            for image in ctx.images:
                calls.append(PlannedCall(tool=tool, arguments={"image": image, **implied}))
        return PlanDecision(action="call_tools", calls=calls, rationale="; ".join([f"rules: {', '.join(tools)}", *notes]))

    def phrase(self, ctx: PlannerContext, draft: str) -> str | None:
        return None


def _mode_in_text(text: str) -> bool:
    return bool(re.search(r"\bki[\s-]?67\b|\bmib[\s-]?1\b|\bpd[\s-]?l1\b|\ber\b|\bpr\b|o?estrogen|progesterone", text, re.I))


def _hits_name(text: str, m: re.Match[str]) -> bool:
    before = text[max(0, m.start() - 40) : m.start()]
    cut = max((b.end() for b in _SCOPE_BREAK.finditer(before)), default=0)
    return not _NEG_BEFORE.search(before[cut:])
