"""``pathasst-train``: one command per training stage (see ``finetune/README.md``).

    pathasst-train data tools --out DIR            tool-invocation data from the catalogue (train/validation JSONL)
    pathasst-train data check-pathcap DIR          validate a PathCap folder
    pathasst-train data check-conversations FILE   validate LLaVA-style conversations
    pathasst-train data consep DIR --out DIR       CoNSeP tiles -> PathCap folder (captions from labels)
    pathasst-train data split-captions IN.json --out OUT.json [--llm-url URL --llm-model NAME]
                                                   multi-panel captions -> per-panel captions (resumable)
    pathasst-train data eval-split GOLD.json [--pred PRED.json]
                                                   panel-label recall/precision and panel-caption token F1
    pathasst-train data instruct CAPTIONS --out FILE.jsonl [--llm-url URL --llm-model NAME]
                                                   LLaVA conversations grounded in the captions (resumable)
    pathasst-train data figures SRC --out DIR     figures + captions + licence from PMC JATS, DOCX, PDF (resumable)
    pathasst-train data filter-build|filter-train|filter-eval|filter-images ...
                                                   pathology image filter (data/figure_cli.py lists the arguments)
    pathasst-train data subfig-build|subfig-train|subfig-eval|split-figure ...
                                                   sub-figure (panel) splitter: deterministic and YOLO backends
    pathasst-train clip ...                        PathCLIP contrastive training (python -m pathasst.finetune.clip)
    pathasst-train vlm --stage 1|2 ...             PathAsst stages 1 and 2 (python -m pathasst.finetune.vlm.train)
    pathasst-train export --vlm DIR --gguf FILE    merge LoRA, export the language model to GGUF
    pathasst-train planner --out DIR               LoRA for the embedded Gemma planner (python -m pathasst.finetune.planner)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _data(argv: list[str]) -> int:
    from pathasst.finetune.data import figure_cli

    if argv and argv[0] in figure_cli.COMMANDS:
        return figure_cli.main(argv)
    ap = argparse.ArgumentParser(prog="pathasst-train data")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tools", help="tool-invocation samples from the tool registry")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--keep-eval-questions", action="store_true", help="do not exclude the planner evaluation questions")
    c = sub.add_parser("check-pathcap")
    c.add_argument("root", type=Path)
    v = sub.add_parser("check-conversations")
    v.add_argument("file", type=Path)
    v.add_argument("--image-root", type=Path, default=None)
    k = sub.add_parser("consep", help="CoNSeP-style tiles -> PathCap folder + labelled folder")
    k.add_argument("src", type=Path)
    k.add_argument("--out", type=Path, required=True)
    k.add_argument("--labelled", type=Path, default=None)
    k.add_argument("--limit", type=int, default=None)
    s = sub.add_parser("split-captions", help="figure id -> caption JSON -> per-panel captions (resumable)")
    s.add_argument("src", type=Path, help="JSON object: figure id -> {\"caption\": ...}")
    s.add_argument("--out", type=Path, required=True, help="figures already in it are kept; written atomically")
    s.add_argument("--llm-url", default=None, help="OpenAI-compatible server (e.g. http://localhost:8080/v1)")
    s.add_argument("--llm-model", default=None, help="model name sent to --llm-url")
    s.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
    s.add_argument("--llm-api-key-env", default=None, help="environment variable holding the API key, if any")
    s.add_argument("--limit", type=int, default=None, help="process at most this many new figures")
    e = sub.add_parser("eval-split", help="score a caption split against gt_subfigures")
    e.add_argument("gold", type=Path, help="JSON object: figure id -> {caption, gt_subfigures}")
    e.add_argument("--pred", type=Path, default=None, help="split-captions output; default: run the parser on gold")
    e.add_argument("--strip-refined", action="store_true", help="score captions with the refined text removed")
    e.add_argument("--baseline", choices=["whole-caption"], default=None,
                   help="whole-caption: every predicted panel gets the whole figure caption")
    e.add_argument("--per-figure", action="store_true")
    n = sub.add_parser("instruct", help="caption file -> LLaVA conversations grounded in the captions (resumable)")
    n.add_argument("src", type=Path, help="JSON object id -> {caption, letter?, path?} or JSON/JSONL rows")
    n.add_argument("--out", type=Path, required=True, help="JSONL; entries already in it are skipped")
    f = sub.add_parser("figures", help="image-caption pairs with provenance from JATS XML, PMC packages, DOCX, PDF")
    f.add_argument("src", type=Path, help="a .nxml/.xml, .tar.gz, .docx or .pdf file, or a folder of them")
    f.add_argument("--out", type=Path, required=True, help="images + pairs.jsonl; pairs already in it are kept")
    f.add_argument("--limit", type=int, default=None, help="stop after this many new pairs")
    n.add_argument("--llm-url", default=None, help="OpenAI-compatible server (e.g. http://localhost:8080/v1)")
    n.add_argument("--llm-model", default=None, help="model name sent to --llm-url")
    n.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per request")
    n.add_argument("--llm-api-key-env", default=None, help="environment variable holding the API key, if any")
    n.add_argument("--limit", type=int, default=None, help="process at most this many new entries")
    a = ap.parse_args(argv)
    if a.cmd in ("split-captions", "instruct") and (a.llm_url is None) != (a.llm_model is None):
        ap.error("--llm-url and --llm-model go together")
    from pathasst.finetune.data.readers import DataError

    try:
        if a.cmd == "tools":
            from pathasst.finetune.data.toolcalls import generate_tool_samples, overlap_report
            from pathasst.finetune.planner import eval_questions
            from pathasst.tools.registry import default_registry

            evals = eval_questions()
            samples = generate_tool_samples(default_registry().catalogue(), seed=a.seed,
                                            exclude=() if a.keep_eval_questions else evals)
            a.out.mkdir(parents=True, exist_ok=True)
            counts = {}
            for split in ("train", "validation"):
                rows = [s.to_json() for s in samples if s.split == split]
                (a.out / f"tool_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
                counts[split] = len(rows)
            print(json.dumps({**counts, "overlap_with_eval": overlap_report(samples, evals)}))
        elif a.cmd == "check-pathcap":
            from pathasst.finetune.data.readers import read_pathcap

            print(json.dumps({"valid": len(read_pathcap(a.root))}))
        elif a.cmd == "check-conversations":
            from pathasst.finetune.data.readers import read_conversations

            print(json.dumps({"valid": len(read_conversations(a.file, a.image_root))}))
        elif a.cmd == "split-captions":
            import os

            from pathasst.finetune.data.caption_files import split_captions_file
            from pathasst.finetune.data.caption_llm import CaptionLLM

            key = os.environ.get(a.llm_api_key_env) if a.llm_api_key_env else None
            llm = CaptionLLM(a.llm_url, a.llm_model, timeout=a.llm_timeout, api_key=key) if a.llm_url else None
            print(json.dumps(split_captions_file(a.src, a.out, llm=llm, limit=a.limit)))
        elif a.cmd == "instruct":
            import os

            from pathasst.finetune.data.instruct import InstructLLM
            from pathasst.finetune.data.instruct_files import instruct_file

            key = os.environ.get(a.llm_api_key_env) if a.llm_api_key_env else None
            llm = InstructLLM(a.llm_url, a.llm_model, timeout=a.llm_timeout, api_key=key) if a.llm_url else None
            print(json.dumps(instruct_file(a.src, a.out, llm=llm, limit=a.limit), indent=1))
        elif a.cmd == "figures":
            from pathasst.finetune.data.figures import extract_figures

            print(json.dumps(extract_figures(a.src, a.out, limit=a.limit), indent=1))
        elif a.cmd == "eval-split":
            from pathasst.finetune.data.caption_eval import evaluate_split
            from pathasst.finetune.data.caption_files import load_caption_file

            pred = load_caption_file(a.pred) if a.pred else None
            print(json.dumps(evaluate_split(load_caption_file(a.gold), pred, strip=a.strip_refined,
                                            baseline=a.baseline, per_figure=a.per_figure, source=str(a.gold)),
                             indent=1))
        else:
            from pathasst.finetune.data.consep import consep_to_pathcap

            print(json.dumps(consep_to_pathcap(a.src, a.out, limit=a.limit, labelled=a.labelled)))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _export(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pathasst-train export")
    ap.add_argument("--vlm", type=Path, required=True, help="a pathasst-train vlm output folder")
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--merged-dir", type=Path, default=None, help="also save the merged HF language model here")
    a = ap.parse_args(argv)
    from pathasst.finetune.export import export_vlm_language_model

    print(json.dumps(export_vlm_language_model(a.vlm, a.gguf, merged_dir=a.merged_dir)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "data":
        return _data(rest)
    if cmd == "clip":
        from pathasst.finetune import clip

        clip.main(rest)
        return 0
    if cmd == "vlm":
        from pathasst.finetune.vlm import train

        train.main(rest)
        return 0
    if cmd == "export":
        return _export(rest)
    if cmd == "planner":
        from pathasst.finetune import planner

        planner.main(rest)
        return 0
    print(f"unknown command {cmd!r}; valid: data, clip, vlm, export, planner", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
