"""The grounding rule's number extraction and checks, on hand-made text."""

from __future__ import annotations

from pathasst.planning.grounding import fmt_number, numbers_in_text, source_numbers, ungrounded_numbers


def test_numbers_in_text_skip_identifiers_and_versions():
    text = "case_001 image 22_2_ihc.png call_3fa2 v0.1.0: 312 nuclei, 12.5% positive, -3 and 1e-05"
    assert numbers_in_text(text) == ["312", "12.5", "-3", "1e-05"]


def test_fmt_number():
    assert fmt_number(3) == "3" and fmt_number(3.0) == "3" and fmt_number(2.3456789) == "2.34568"


def test_ungrounded():
    allowed = source_numbers({"count": 312, "positivity_index": 12.5432, "cells": [{"x": 4.0}]})
    assert ungrounded_numbers("312 nuclei, index 12.54 (12.5432), x 4", allowed) == []
    assert ungrounded_numbers("index 12.5, 313 nuclei", allowed) == ["313"]  # 12.5 is a display rounding
    assert ungrounded_numbers("about 40 percent", allowed) == ["40"]
