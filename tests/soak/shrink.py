"""The shortest program that still fails, by replay (delta debugging over its steps).

A soak failure depends on timing as well as on the steps, so a candidate counts as
failing when any of `tries` replays fails with the same problem (the first problem's
title); one that passes them all is taken to have lost the failure. The search stops
at its deadline and returns the shortest failing program found by then.
"""

from __future__ import annotations

import time
from typing import Callable

from tests.soak.program import Program


def shrink(program: Program, fails: Callable[[Program], bool], *, deadline: float,
           say: Callable[[str], None] = lambda line: None) -> Program:
    """ddmin: try dropping chunks of steps, halving the chunk size when none can go."""
    current = program
    parts = 2
    for _ in range(10_000):
        n = len(current.steps)
        if n <= 1 or time.monotonic() >= deadline:
            break
        size = -(-n // parts)
        chunks = [set(range(i, min(i + size, n))) for i in range(0, n, size)]
        for chunk in chunks:
            if time.monotonic() >= deadline:
                return current
            candidate = current.without(chunk)
            if fails(candidate):
                say(f"  shrink: {n} -> {len(candidate.steps)} steps still fails")
                current, parts = candidate, max(parts - 1, 2)
                break
        else:
            if size == 1:
                break
            parts = min(parts * 2, n)
    return current
