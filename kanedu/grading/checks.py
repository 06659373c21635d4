"""``check(name, answer)``: the inline self-check that students run in their notebook.

It draws a few fixed inputs, runs the answer on them with the package's own implementation switched
off, judges the outputs against the reference and prints one line: passed, or which input failed with
the expected and the received value, and a hint. It never raises (except for a KeyboardInterrupt), so
an exercise notebook runs from top to bottom even before any part is answered.

The same ``cases``/``run``/``judge`` functions grade the notebook later, but then the inputs are drawn
by the grader at grading time and the judging happens in the grader's process: a passing inline check
is a good sign, not the score.
"""

from __future__ import annotations

import json
import zlib

import torch

from . import wire
from .parts import Part, PartResult, judge_outcomes, run_cases
from .registry import EXERCISES, PARTS

__all__ = ["check", "results", "assert_all_passed"]

_results: dict[str, PartResult] = {}


def _roundtrip(value):
    """``value`` as it would arrive over the grader's pipe (so the inline check sees what the grader sees)."""
    return wire.decode(json.loads(json.dumps(wire.encode(value))))


def _inline_cases(part: Part) -> list[dict]:
    gen = torch.Generator().manual_seed(zlib.crc32(part.name.encode()))  # the same cases every time
    return part.cases(gen, False)


def _points(n: int) -> str:
    return f"{n} point" + ("" if n == 1 else "s")


def check(name: str, answer) -> PartResult | None:
    """Check ``answer`` (the function or class a part asks for) and print the verdict.

    Args:
        name: the part, e.g. ``"ex02.cox_de_boor"`` (the exercise notebook gives it).
        answer: your function, e.g. ``cox_de_boor``.

    Returns:
        The :class:`~kanedu.grading.parts.PartResult` (true if the part passed), or ``None`` if ``name``
        is not a part. Nothing is raised: problems are printed.
    """
    try:
        part = PARTS.get(name) if isinstance(name, str) else None
        if part is None:
            prefix = name.split(".")[0] if isinstance(name, str) else ""
            known = [p.name for p in EXERCISES[prefix].parts] if prefix in EXERCISES else sorted(EXERCISES)
            print(f"? check({name!r}, ...): there is no such exercise part; known: {', '.join(known)}")
            return None
        if not callable(answer):
            result = PartResult(part, 0, f"expected your {part.answer} (a function or class), got "
                                         f"{type(answer).__name__}")
        else:
            cases = _inline_cases(part)
            reply = run_cases(part, answer, [_roundtrip(c) for c in cases])
            result = judge_outcomes(part, cases, json.loads(json.dumps(reply)))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the check must not stop the notebook
        print(f"! {name}: the check itself failed ({type(exc).__name__}: {exc}); please tell your instructor")
        return None
    _results[part.name] = result
    if result.passed:
        line = f"✓ {part.name} passed ({_points(part.points)}): {result.message}"
        if result.seconds > 5 * part.seconds:
            line += (f". Note: it took {result.seconds:.1f} s, the reference under {part.seconds:g} s; "
                     "the grader stops a part that runs far too long")
        print(line)
    elif result.message.startswith("not answered yet"):
        print(f"… {part.name} ({_points(part.points)}): {result.message}. Hint: {part.hint}")
    else:
        print(f"✗ {part.name} failed (0 of {_points(part.points)}): {result.message}\n  Hint: {part.hint}")
    return result


def results() -> dict[str, PartResult]:
    """The latest result of every part checked in this session, by part name."""
    return dict(_results)


def assert_all_passed(exercise: str) -> None:
    """Raise ``AssertionError`` unless every part of ``exercise`` ("ex02") passed its latest check.

    For instructors' solution notebooks (inside a solution block, so exercises never call it).
    """
    parts = EXERCISES[exercise].parts
    failed = [p.name for p in parts if p.name not in _results or not _results[p.name].passed]
    assert not failed, f"these parts did not pass their check: {failed}"
