"""Conversation templates and tokenisation with labels on the assistant turns only (LLaVA-style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["IGNORE_INDEX", "IMAGE_PLACEHOLDER", "VICUNA_V1", "Template", "tokenize_conversation"]

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = -200  # input id where the projected image tokens are spliced in (as in LLaVA)


@dataclass(frozen=True)
class Template:
    """How turns are rendered. Vicuna v1: ``SYSTEM USER: ... ASSISTANT: ...</s>``."""

    system: str
    user: str = "USER"
    assistant: str = "ASSISTANT"
    tool: str = "TOOL"
    sep: str = " "

    def prefix(self) -> str:
        return self.system + self.sep if self.system else ""


VICUNA_V1 = Template(
    system=(
        "A chat between a pathologist and PathAsst, a pathology assistant. PathAsst calls analysis tools with "
        '{"tool_calls": [...]} when a measurement is needed and answers only from their results.'
    )
)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_conversation(
    turns: list[dict[str, str]], tokenizer: Any, template: Template, *, max_length: int = 2048, generation: bool = False
) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one conversation. ``<image>`` in a human turn becomes :data:`IMAGE_PLACEHOLDER`;
    labels are :data:`IGNORE_INDEX` except on assistant (``gpt``) replies and their end-of-sequence token. With
    ``generation=True`` the last turn must be human and the ids end with ``ASSISTANT:`` (the prompt to complete)."""
    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)

    def add(text: str, train: bool) -> None:
        parts = text.split("<image>")
        for k, part in enumerate(parts):
            if k:
                ids.append(IMAGE_PLACEHOLDER)
                labels.append(IGNORE_INDEX)
            if part:
                toks = _encode(tokenizer, part)
                ids.extend(toks)
                labels.extend(toks if train else [IGNORE_INDEX] * len(toks))

    add(template.prefix(), False)
    for turn in turns:
        role = turn["from"]
        if role == "gpt":
            add(f"{template.assistant}:", False)
            add(" " + turn["value"], True)
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
            add(template.sep, False)
        else:
            name = template.user if role == "human" else template.tool
            add(f"{name}: {turn['value']}{template.sep}", False)
    if generation:
        add(f"{template.assistant}:", False)
    return ids[:max_length], labels[:max_length]
