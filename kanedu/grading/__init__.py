"""Exercises, inline checks and a batch grader for the kanedu course.

Students call :func:`check` in an exercise notebook::

    from kanedu.grading import check
    check("ex02.cox_de_boor", cox_de_boor)

Instructors generate the exercises from the solutions and grade submissions from the command line::

    python -m kanedu.grading generate                 # solutions/*.ipynb -> exercises/*.ipynb
    python -m kanedu.grading grade submissions/ --out grades.csv --jobs 2 --feedback feedback/

``import kanedu`` does not import this package; the grader's own modules (runner, CLI) load only when used.
"""

from .checks import assert_all_passed, check, results
from .registry import EXERCISES, PARTS

__all__ = ["check", "results", "assert_all_passed", "EXERCISES", "PARTS"]
