"""Exercise parts: what each one asks for, how it is run, and how its output is judged.

A :class:`Part` is split along the trust boundary of grading:

* ``cases(gen, hidden)`` draws the inputs. The inline check draws a few with a fixed seed; the grader
  draws more, in its own process, with a seed it picks at grading time.
* ``run(answer, case)`` is the only step that runs in the student's process: it calls the student's
  function (or class) on one case and returns plain data (tensors, numbers, lists). The package's own
  implementation of the part is switched off meanwhile (:mod:`kanedu.grading.guard`).
* ``judge(case, output)`` compares that data with the reference answer and returns ``None`` (correct)
  or a message naming the input, the expected and the received value. In batch grading it runs in the
  grader's process, so nothing a submission patches (``torch.allclose``, ``check``, ``print``) reaches it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import wire
from .guard import SwitchedOff, switched_off_error

__all__ = ["Part", "Exercise", "PartResult", "run_cases", "judge_outcomes", "ANSWERS_MODULE"]

ANSWERS_MODULE = "kanedu.grading.answers"  # the reference answers: switched off for every part
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../kanedu


@dataclass(frozen=True)
class Part:
    """One graded part of an exercise notebook.

    Attributes:
        name: ``"exNN.short_name"``, the first argument of ``check``.
        title: the heading of the part in the notebook.
        answer: the name the notebook defines (function or class) and the grader looks up.
        points, minutes: what the part is worth and roughly how long it takes a student.
        seconds: the check runs in under this many seconds with the reference answer.
        hint: printed by the check when the answer fails.
        forbidden: targets (see :mod:`kanedu.grading.guard`) switched off while the answer runs.
        cases, run, judge: see the module docstring; ``describe(case)`` names a case in messages.
    """

    name: str
    title: str
    answer: str
    points: int
    minutes: int
    seconds: float
    hint: str
    cases: Callable[[torch.Generator, bool], list[dict]]
    run: Callable[[Any, dict], Any]
    judge: Callable[[dict, Any], str | None]
    describe: Callable[[dict], str]
    forbidden: tuple[str, ...] = ()

    @property
    def switched_off(self) -> tuple[str, ...]:
        return (*self.forbidden, ANSWERS_MODULE)


@dataclass(frozen=True)
class Exercise:
    """An exercise notebook: ``exercises/<notebook>.ipynb``, generated from ``solutions/``."""

    id: str  # "ex02"
    notebook: str  # "02_bsplines"
    title: str
    parts: tuple[Part, ...] = field(default_factory=tuple)

    @property
    def max_points(self) -> int:
        return sum(p.points for p in self.parts)


@dataclass
class PartResult:
    """The verdict on one part: points earned and a message for the student."""

    part: Part
    points: int
    message: str
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.points == self.part.points

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"<{self.part.name}: {self.points} of {self.part.points} points: {self.message}>"

    def _ipython_display_(self) -> None:
        """Show nothing when a check is the last line of a cell: ``check`` has printed the verdict."""


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_error(exc: BaseException, part: Part) -> dict:
    label = switched_off_error(exc)
    where = ""
    skip = (_PACKAGE_DIR, sys.prefix, sys.base_prefix, sys.exec_prefix)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):  # the innermost line of the student's code
        if not frame.filename.startswith(skip):
            where = f"(line {frame.lineno}: {_short(frame.line or '', 80)})"
            break
    return {
        "type": type(exc).__name__,
        "message": _short(str(exc)),
        "stub": isinstance(exc, NotImplementedError) and str(exc).startswith(part.name),
        "switched_off": label,
        "where": where,
    }


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside the block: the cases are tiny, and on a busy 2-core machine two
    threads made them ~50x slower (measured: 16 ms vs 0.3 ms per Adam step of a small MLP)."""
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def run_cases(part: Part, answer, cases: list[dict], *, reraise=(KeyboardInterrupt,)) -> dict:
    """Run ``answer`` on every case with the package switched off; returns a reply for
    :func:`judge_outcomes`. Runs in the student's process; outputs are encoded inside the window, so
    patched serialisation cannot call the package either. Stops at the first case that raises."""
    outcomes = []
    start = time.perf_counter()
    with one_thread(), SwitchedOff(part.switched_off) as off:
        for case in cases:
            try:
                output = part.run(answer, case)
                outcomes.append({"output": wire.encode(output)})
            except reraise:
                raise
            except BaseException as exc:  # SystemExit too: an answer that exits is a wrong answer
                outcomes.append({"error": _describe_error(exc, part)})
                break
    return {"outcomes": outcomes, "hits": list(off.hits), "tampered": off.tampered,
            "seconds": time.perf_counter() - start}


def judge_outcomes(part: Part, cases: list[dict], reply: Any) -> PartResult:
    """Judge a reply of :func:`run_cases` against the reference; never trusts its shape."""
    with one_thread():
        return _judge(part, cases, reply)


def _judge(part: Part, cases: list[dict], reply: Any) -> PartResult:
    seconds = 0.0
    try:
        if not isinstance(reply, dict):
            raise wire.WireError("the reply is not a dict")
        seconds = float(reply.get("seconds", 0.0)) if isinstance(reply.get("seconds"), (int, float)) else 0.0
        tampered, hits, outcomes = reply.get("tampered"), reply.get("hits"), reply.get("outcomes")
        if tampered:
            return PartResult(part, 0, f"not graded: the answer tampered with the check ({_short(tampered, 200)})",
                              seconds)
        if hits:
            names = ", ".join(str(h) for h in list(hits)[:3])
            return PartResult(part, 0, f"your answer runs the package's own implementation ({_short(names, 200)}), "
                                       "which does not count for this part: write it yourself", seconds)
        if not isinstance(outcomes, list) or not outcomes:
            raise wire.WireError("no outcomes")
        for i, (case, outcome) in enumerate(zip(cases, outcomes)):
            where = f"case {i + 1} of {len(cases)} ({part.describe(case)})"
            if not isinstance(outcome, dict):
                raise wire.WireError("an outcome is not a dict")
            if "error" in outcome:
                err = outcome["error"] if isinstance(outcome["error"], dict) else {}
                if err.get("switched_off"):
                    return PartResult(part, 0, f"your answer calls {_short(err['switched_off'], 100)}, which is "
                                               "switched off for this part: write it yourself", seconds)
                if err.get("stub"):
                    return PartResult(part, 0, "not answered yet: the stub still raises NotImplementedError", seconds)
                text = (f"{where}: your {part.answer} raised {_short(err.get('type', '?'), 60)}: "
                        f"{_short(err.get('message', ''), 240)} {_short(err.get('where', ''), 100)}")
                return PartResult(part, 0, text.rstrip(), seconds)
            message = part.judge(case, wire.decode(outcome.get("output")))
            if message:
                return PartResult(part, 0, f"{where}: {message}", seconds)
        if len(outcomes) < len(cases):
            raise wire.WireError(f"{len(outcomes)} outcomes for {len(cases)} cases")
        return PartResult(part, part.points, f"passed all {len(cases)} cases", seconds)
    except (wire.WireError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return PartResult(part, 0, f"not graded: malformed result from the notebook ({_short(exc, 120)})", seconds)
    except Exception as exc:  # an output the comparison cannot handle (e.g. a tensor torch cannot compare)
        return PartResult(part, 0, f"the check could not compare your result ({type(exc).__name__}: "
                                   f"{_short(exc, 120)})", seconds)


# --------------------------------------------------------------------------------------------------
# helpers for the judges: type and shape checks, and comparisons that name the worst entry
# --------------------------------------------------------------------------------------------------


def is_tensor(value, shape=None, dtype=None, what: str = "the result") -> str | None:
    """None if ``value`` is a tensor of ``shape`` (and ``dtype``), else a message saying what it is."""
    if not isinstance(value, torch.Tensor):
        return f"expected {what} to be a torch.Tensor, got {_type_name(value)}"
    if shape is not None and tuple(value.shape) != tuple(shape):
        return f"expected {what} of shape {tuple(shape)}, got shape {tuple(value.shape)}"
    if dtype is not None and value.dtype != dtype:
        return f"expected {what} of dtype {dtype} (the dtype of the inputs), got {value.dtype}"
    return None


def _type_name(value) -> str:
    if isinstance(value, wire.Unsupported):
        return value.what
    return f"{type(value).__name__} {_short(repr(value), 60)}"


def _index(i: tuple) -> str:
    return "[" + ", ".join(str(int(v)) for v in i) + "]" if i else ""


def close(got: torch.Tensor, expected: torch.Tensor, *, rtol: float = 1e-8, atol: float = 1e-10,
          what: str = "result") -> str | None:
    """None if ``got`` matches ``expected`` elementwise, else a message naming the worst entry."""
    got64, exp64 = got.detach().to(torch.float64), expected.detach().to(torch.float64)
    bad = ~torch.isclose(got64, exp64, rtol=rtol, atol=atol, equal_nan=False)
    if not bool(bad.any()):
        return None
    diff = torch.where(bad, (got64 - exp64).abs().nan_to_num(nan=math.inf), torch.zeros_like(got64))
    i = tuple(int(v) for v in torch.nonzero(diff == diff.max())[0]) if diff.dim() else ()
    n_bad = int(bad.sum())
    return (f"expected {what}{_index(i)} = {exp64[i].item():.10g}, got {got64[i].item():.10g} "
            f"({n_bad} of {bad.numel()} entries differ)")


def equal(got: torch.Tensor, expected: torch.Tensor, what: str = "result") -> str | None:
    """None if the tensors are equal elementwise, else a message naming the first differing entry."""
    bad = got != expected
    if not bool(bad.any()):
        return None
    i = tuple(int(v) for v in torch.nonzero(bad)[0]) if bad.dim() else ()
    return f"expected {what}{_index(i)} = {expected[i].item()}, got {got[i].item()} ({int(bad.sum())} entries differ)"


def is_number(value, what: str = "the result", integer: bool = False) -> str | None:
    """None if ``value`` is a (finite) number (an integer if asked), else a message."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected {what} to be {'an int' if integer else 'a number'}, got {_type_name(value)}"
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        return f"expected {what} to be an integer, got {value!r}"
    if not math.isfinite(value):
        return f"expected {what} to be finite, got {value!r}"
    return None


def as_number(value):
    """A Python number from a number or a one-element tensor."""
    return value.item() if isinstance(value, torch.Tensor) else value


def rand(gen: torch.Generator, *shape, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Uniform float64 samples in ``[lo, hi)`` from ``gen``."""
    return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)


def randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """A uniform integer in ``[lo, hi]`` from ``gen``."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def choice(gen: torch.Generator, options):
    """One of ``options``, uniformly, from ``gen``."""
    options = list(options)
    return options[randint(gen, 0, len(options) - 1)]


def int_judge(expected_fn, what: str):
    """A judge for parts whose answer is one integer: ``expected_fn(case)``, compared exactly."""
    def judge(case, out):
        msg = is_number(out, what, integer=True)
        if msg:
            return msg
        expected, got = expected_fn(case), int(as_number(out))
        return None if got == expected else f"expected {what} {expected}, got {got}"
    return judge
