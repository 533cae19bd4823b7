"""The ``hybrid`` planner: the rules first; a MiniLM nearest-neighbour vote for requests the rules cannot place.

How a question becomes a plan (round 0; any later round finishes, as with the rules):

1. :class:`~pathasst.planning.rules.RulesPlanner` decides (injection text cut, typos corrected, triggers,
   stain and modality routing). Its tools are always kept: on the design data, letting the neighbours overrule or
   prune the rules' choice broke more plans than it fixed at every similarity threshold tried, so nothing here
   arbitrates against the rules.
2. Sentences the rules cannot place go to the fallback: the whole question when the rules found no tool and said
   "no tool matches the question", or, when they found tools, each further sentence that on its own matches nothing
   ("Is the scan sharp? And where is the tumour?"); a question the rules took for small talk ("OK, where is the
   tumour?") goes too. Questions the rules recognise as needing no tool (definitions, general knowledge, "no genuine
   request left" after cutting an injection, HER2 scoring) never reach it, nor does a sentence with a negation
   ("don't run mitosis detection": an embedding does not see the "don't").
3. The fallback embeds the sentence as the rules read it (injection text cut, file names removed, typos corrected;
   case notes and retrieved reports are never read) with all-MiniLM-L6-v2 and takes the ``K`` nearest examples by
   cosine similarity; those at least ``MIN_SIMILARITY`` similar vote. A tool is proposed when the similarity-weighted
   share of voters calling it is at least ``MIN_VOTE``; voters that call no tool (definitions, greetings, unsupported
   markers: the generator's negatives) vote for nothing, and with no voter there is no tool.
4. The proposal is routed like the rules route: a slide diagnosis on a patch is ``tissue_classification``;
   ``ihc_quantification`` needs a Ki-67/ER/PR/PD-L1 stain or a marker named in the question; ``region_segmentation``
   needs coordinates written in the question.
5. Calls and arguments are built by :meth:`RulesPlanner.plan` (one call per tool per image, catalogue respected).

``settings.hybrid_fallback`` chooses who proposes in step 3: ``neighbours`` (the default, above), ``tuned`` (the
``llamacpp`` planner with the shipped LoRA, for every sentence the rules cannot place) or ``neighbours_then_tuned``
(the tuned model only where no example reaches ``MIN_SIMILARITY``, and only for a sentence that can be a request on
its own); the notes name who decided. Measured in ``finetune/adapters/MODEL_CARD.md``: the neighbours stay the
default because the tuned model did not beat them on the development and validation sets.

The examples (``planning/data/hybrid_examples.jsonl``) are the train split of the registry-generated tool-invocation
data, written by ``python scripts/write_hybrid_examples.py`` (``generate_tool_samples`` with seed 0, the planner
evaluation questions excluded); ``tests/test_planner_hybrid.py`` checks that the file still equals the generator's
output. They are embedded on first use of the fallback (about 850 distinct texts, tens of seconds on two CPU cores)
and cached in ``settings.cache_dir / "planner"`` under a digest of the texts, labels and embedder, so a fresh machine
needs no download and later processes load the cache in milliseconds. Questions the rules place cost what the rules
cost (well under a millisecond); a fallback query embeds one sentence, about 13 ms on one CPU thread once the model
is loaded (about 5 s, once per process). The embedder follows ``settings.torch_threads``: on a busy machine one
thread is much faster for a single sentence than several.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from pathasst.core.embedders import EmbedderError, text_embedder
from pathasst.core.settings import Settings
from pathasst.planning.base import PlanDecision, PlannerContext, PlannerError, PlannerOutputError
from pathasst.planning.llamacpp import LlamaCppPlanner
from pathasst.planning.parsing import question_coordinates
from pathasst.planning.rules import (
    _FILE_NAME,
    _NEG_BEFORE,
    _SENTENCE,
    TOOL_ORDER,
    RulesPlanner,
    _correct_typos,
    _is_ihc_stain,
    _mode_in_text,
    order_tools,
    strip_injections,
)

__all__ = [
    "EXAMPLES_FILE",
    "K",
    "MIN_SIMILARITY",
    "MIN_VOTE",
    "HybridPlanner",
    "ToolIndex",
    "Vote",
    "index_digest",
    "load_examples",
    "rules_text",
]

EXAMPLES_FILE = "hybrid_examples.jsonl"  # in pathasst.agent/data; not "planner_*": those are evaluation sets
K = 5
MIN_SIMILARITY = 0.6  # chosen by 5-fold cross-validation on the generated data, grouped by question template
MIN_VOTE = 0.5
_INDEX_FORMAT = 1
# the rules' last note when they place a question nowhere. "Small talk" is only a greeting at the start ("OK, where
# is the tumour?"), so it goes to the neighbours too, whose greetings and thanks call no tool. Any other outcome
# (tools, or a question recognised as needing none) is final.
_UNPLACED = ("no tool matches the question", "small talk: no tool needed")
_HER2_NOTE = "HER2 membrane scoring is not supported"


def rules_text(question: str) -> str:
    """``question`` as the rules read it: injection text cut, image file names removed, typos corrected."""
    clean, _ = strip_injections(_FILE_NAME.sub(" ", question))
    return " ".join(_correct_typos(clean).split())


def load_examples(path: Path | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(question, tools) pairs from the shipped examples file (or ``path``), in file order."""
    source = Path(path) if path is not None else files("pathasst.planning") / "data" / EXAMPLES_FILE
    out: list[tuple[str, tuple[str, ...]]] = []
    for lineno, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        unknown = [t for t in row["tools"] if t not in TOOL_ORDER]
        if unknown:
            raise PlannerError(f"{source}:{lineno}: unknown tools {unknown}; valid tools: {', '.join(TOOL_ORDER)}")
        out.append((str(row["question"]), tuple(row["tools"])))
    return out


@dataclass(frozen=True)
class Vote:
    """What the nearest examples say about one text."""

    tools: tuple[str, ...]  # proposed tools (before routing), in TOOL_ORDER
    scores: dict[str, float]  # similarity-weighted share of the voting neighbours calling each tool
    similarity: float  # cosine similarity of the nearest example
    nearest: str  # the nearest example's text


class ToolIndex:
    """Unit-norm example embeddings with their tool labels; :meth:`vote` is a weighted k-nearest-neighbour vote."""

    def __init__(
        self, vectors: np.ndarray, labels: np.ndarray, texts: Sequence[str], tools: Sequence[str] = TOOL_ORDER
    ) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=bool)
        self.texts = list(texts)
        self.tools = tuple(tools)
        n = len(self.texts)
        if self.vectors.ndim != 2 or len(self.vectors) != n or self.labels.shape != (n, len(self.tools)):
            raise PlannerError(
                f"inconsistent tool index: vectors {self.vectors.shape}, labels {self.labels.shape}, {n} texts"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def build(cls, examples: Iterable[tuple[str, Sequence[str]]], embed: Any) -> ToolIndex:
        """Embed ``examples`` (read as the rules read them, duplicates dropped) with ``embed(texts) -> (N, D)``."""
        texts, labels = _distinct(examples)
        vectors = np.asarray(embed(texts), dtype=np.float32)
        return cls(vectors, labels, texts)

    def vote(
        self, vector: np.ndarray, k: int = K, min_vote: float = MIN_VOTE, min_similarity: float = MIN_SIMILARITY
    ) -> Vote:
        """The tools called by at least ``min_vote`` (similarity-weighted) of the ``k`` nearest examples that are at
        least ``min_similarity`` similar; none when no example is that similar. Dissimilar neighbours do not vote,
        so an exact match that calls no tool is not outvoted by loosely related examples that call one."""
        sims = self.vectors @ np.asarray(vector, dtype=np.float32).reshape(-1)
        top = np.argsort(-sims, kind="stable")[: max(1, min(k, len(sims)))]
        first = int(top[0])
        top = top[sims[top] >= min_similarity]
        scores: dict[str, float] = {}
        chosen: tuple[str, ...] = ()
        if len(top):
            weights = sims[top]
            shares = (self.labels[top] * weights[:, None]).sum(axis=0) / weights.sum()
            scores = {t: round(float(v), 4) for t, v in zip(self.tools, shares, strict=True) if v > 0}
            chosen = tuple(t for t, v in zip(self.tools, shares, strict=True) if v >= min_vote)
        return Vote(chosen, scores, round(float(sims[first]), 4), self.texts[first])

    # ---- cache -------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write atomically (a temporary file renamed into place), so concurrent processes never read half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp.npz", dir=path.parent)
        os.close(fd)
        try:
            arrays = {"texts": np.array(self.texts), "tools": np.array(self.tools)}
            np.savez(tmp, vectors=self.vectors, labels=self.labels, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is readable like the other cached files
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: Path) -> ToolIndex:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["vectors"], z["labels"], [str(t) for t in z["texts"]], [str(t) for t in z["tools"]])


def _distinct(examples: Iterable[tuple[str, Sequence[str]]]) -> tuple[list[str], np.ndarray]:
    texts: list[str] = []
    rows: list[list[bool]] = []
    seen: dict[str, tuple[str, ...]] = {}
    for question, tools in examples:
        text = rules_text(question)
        key = tuple(sorted(tools))
        if text in seen:
            if seen[text] != key:
                raise PlannerError(f"example {text!r} is labelled both {seen[text]} and {key}")
            continue
        seen[text] = key
        texts.append(text)
        rows.append([t in key for t in TOOL_ORDER])
    return texts, np.array(rows, dtype=bool).reshape(len(texts), len(TOOL_ORDER))


def index_digest(texts: Sequence[str], labels: np.ndarray, embedder_fingerprint: str) -> str:
    """Identifies an index exactly: format, embedder, tool order, texts and labels."""
    payload = json.dumps(
        [_INDEX_FORMAT, embedder_fingerprint, list(TOOL_ORDER), list(texts), np.asarray(labels, dtype=int).tolist()]
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class HybridPlanner(RulesPlanner):
    """Rules, plus a MiniLM nearest-neighbour fallback for sentences they cannot place (module docstring).

    ``index`` and ``embed`` (``texts -> (N, D)`` unit vectors) may be given, e.g. by tests; by default the examples
    shipped with the package are embedded with the ``minilm`` text embedder on first use and cached. An index built
    with a given ``embed`` is cached only when ``fingerprint`` names its embedding space.
    """

    name = "hybrid"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        index: ToolIndex | None = None,
        embed: Any | None = None,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__(settings)
        self._index = index
        self._embed = embed
        self._fingerprint = fingerprint  # names the embedding space in the cache key; None = do not cache
        self._lock = threading.Lock()
        self._tuned: LlamaCppPlanner | None = None

    # ---- the decision ----------------------------------------------------------------------------
    def tools_for(self, question: str, stain: str | None, image_kind: str,
                  catalogue: Sequence[dict[str, Any]] | None = None) -> tuple[list[str], list[str]]:
        tools, notes = super().tools_for(question, stain, image_kind, catalogue)
        if not tools and not _unplaced(notes):
            return tools, notes  # a question the rules recognise as needing no tool
        sentences = [s.strip() for s in _SENTENCE.findall(rules_text(question)) if re.search(r"[A-Za-z]{2}", s)]
        if len(sentences) > 1:  # only the sentences that on their own match nothing and ask for something
            sentences = [s for s in sentences
                         if _unplaced(RulesPlanner.tools_for(self, s, stain, image_kind, catalogue)[1])]
        elif tools:
            sentences = []  # one sentence, and the rules placed it
        asked = [s for s in sentences if not _NEG_BEFORE.search(s)]
        if not asked:
            return tools, notes
        wanted = set(tools)
        proposals = self._fallback(asked, stain, image_kind, catalogue)
        for sentence, (proposed, source) in zip(asked, proposals, strict=True):
            routed, why = _route(proposed, sentence, stain, image_kind)
            wanted |= set(routed)
            notes.append(f"fallback ({source}) for {sentence[:60]!r}: {', '.join(routed) or 'no tool'}"
                         + (f" ({'; '.join(why)})" if why else ""))
        return order_tools(wanted, catalogue), notes

    def _fallback(self, sentences: list[str], stain: str | None, image_kind: str,
                  catalogue: Sequence[dict[str, Any]] | None) -> list[tuple[list[str], str]]:
        """(tools, who proposed them) per sentence: the neighbours' vote, or the tuned model
        (``settings.hybrid_fallback``)."""
        mode = self.settings.hybrid_fallback if self.settings is not None else "neighbours"
        if mode == "tuned":
            return [(self._tuned_tools(s, stain, image_kind, catalogue), "tuned Gemma 270M + LoRA") for s in sentences]
        out = []
        for sentence, vote in zip(sentences, self.votes(sentences), strict=True):
            if mode == "neighbours_then_tuned" and vote.similarity < MIN_SIMILARITY and _asks(sentence):
                out.append((self._tuned_tools(sentence, stain, image_kind, catalogue),
                            f"tuned Gemma 270M + LoRA; no neighbour above {MIN_SIMILARITY}"))
            else:
                out.append((list(vote.tools), f"MiniLM {K}-NN, nearest {vote.similarity:.2f}: {vote.nearest[:60]!r}"))
        return out

    def _tuned_tools(self, sentence: str, stain: str | None, image_kind: str,
                     catalogue: Sequence[dict[str, Any]] | None) -> list[str]:
        with self._lock:
            if self._tuned is None:
                self._tuned = LlamaCppPlanner(self._settings())
        images = ["slide.svs"] if image_kind == "wsi" else ["image.png"]
        ctx = PlannerContext(question=sentence, stain=stain, image_kind=image_kind, images=images,
                             catalogue=list(catalogue or []))
        try:
            return [call.tool for call in self._tuned.plan(ctx).calls]
        except PlannerOutputError:  # e.g. a marker tool the sentence and stain give no marker for: no proposal
            return []

    def plan(self, ctx: PlannerContext) -> PlanDecision:
        decision = super().plan(ctx)
        if decision.rationale and decision.rationale.startswith("rules: "):
            decision = decision.model_copy(update={"rationale": "hybrid: " + decision.rationale[len("rules: ") :]})
        return decision

    def votes(self, texts: Sequence[str]) -> list[Vote]:
        """The neighbours' vote for each of ``texts`` (already read as the rules read them)."""
        index = self.index()
        vectors = np.asarray(self._embedder()(list(texts)), dtype=np.float32)
        return [index.vote(v) for v in vectors]

    # ---- lazily built parts ------------------------------------------------------------------------
    def _embedder(self) -> Any:
        if self._embed is None:
            try:
                embedder = text_embedder(self._settings(), "minilm")
            except EmbedderError as exc:
                raise PlannerError(f"the hybrid planner's fallback needs the minilm text embedder: {exc}") from exc

            def embed(texts: list[str]) -> np.ndarray:
                try:
                    return embedder.embed_texts(texts)
                except EmbedderError as exc:
                    raise PlannerError(f"the hybrid planner's fallback needs the minilm text embedder: {exc}") from exc

            self._embed, self._fingerprint = embed, embedder.fingerprint()
        return self._embed

    def _settings(self) -> Settings:
        if self.settings is None:
            raise PlannerError("the hybrid planner's fallback needs the settings (its embedder and index cache): "
                               "build it through pathasst.agent.system.build_system(settings)")
        return self.settings

    def index(self) -> ToolIndex:
        """The example index: given, cached in ``settings.cache_dir``, or built now from the shipped examples."""
        with self._lock:
            if self._index is None:
                embed = self._embedder()
                texts, labels = _distinct(load_examples())
                digest = index_digest(texts, labels, str(self._fingerprint))
                path = Path(self._settings().cache_dir).expanduser() / "planner" / f"hybrid-index-{digest[:16]}.npz"
                cacheable = self._fingerprint is not None
                index = _load_cached(path) if cacheable else None
                if index is None or index.texts != texts or not np.array_equal(index.labels, labels):
                    index = ToolIndex(np.asarray(embed(texts), dtype=np.float32), labels, texts)
                    if cacheable:
                        index.save(path)
                self._index = index
            return self._index


def _asks(sentence: str) -> bool:
    """Whether a sentence can be a request on its own: a question, or at least three words that do not lead in to
    something else ("Doctor here.", "For this case:" are not)."""
    text = sentence.rstrip()
    return text.endswith("?") or not text.endswith(":") and len(re.findall(r"[A-Za-z0-9-]+", text)) >= 3


def _load_cached(path: Path) -> ToolIndex | None:
    """The index cached at ``path``; None when there is none or it cannot be read (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        return ToolIndex.load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, PlannerError):
        return None


def _unplaced(notes: list[str]) -> bool:
    """The rules found nothing to do and did not recognise the question as needing no tool."""
    return bool(notes) and notes[-1] in _UNPLACED and not any(n.startswith(_HER2_NOTE) for n in notes)


def _route(tools: Sequence[str], text: str, stain: str | None, image_kind: str) -> tuple[list[str], list[str]]:
    """The fallback's tools routed by stain and modality as the rules route them, and why any were dropped."""
    out: list[str] = []
    why: list[str] = []
    for tool in tools:
        if tool == "slide_classification" and image_kind != "wsi":
            tool = "tissue_classification"  # a diagnosis on a patch
        if tool == "ihc_quantification" and not (_is_ihc_stain(stain) or _mode_in_text(text)):
            why.append("ihc_quantification dropped: no Ki-67, ER/PR or PD-L1 stain or marker")
            continue
        if tool == "region_segmentation" and not question_coordinates(text):
            why.append("region_segmentation dropped: no point or box in the question")
            continue
        if tool not in out:
            out.append(tool)
    return [t for t in TOOL_ORDER if t in out], why
