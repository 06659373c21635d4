"""All exercises and their parts, by id (``"ex02"``), notebook name and part name."""

from __future__ import annotations

from . import ex01, ex02, ex03, ex04, ex05, ex06, ex07, ex08, ex09, ex10, ex11
from .parts import Exercise, Part

__all__ = ["EXERCISES", "PARTS", "find_exercise"]

EXERCISES: dict[str, Exercise] = {e.id: e for e in (ex01.EXERCISE, ex02.EXERCISE, ex03.EXERCISE, ex04.EXERCISE,
                                                    ex05.EXERCISE, ex06.EXERCISE, ex07.EXERCISE, ex08.EXERCISE,
                                                    ex09.EXERCISE, ex10.EXERCISE, ex11.EXERCISE)}
PARTS: dict[str, Part] = {p.name: p for e in EXERCISES.values() for p in e.parts}


def find_exercise(key: str) -> Exercise | None:
    """The exercise with id ``key`` ("ex02") or notebook name ("02_bsplines", "02_bsplines.ipynb")."""
    key = key[:-6] if key.endswith(".ipynb") else key
    for exercise in EXERCISES.values():
        if key in (exercise.id, exercise.notebook):
            return exercise
    return None
