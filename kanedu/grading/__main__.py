"""The course's grading commands.

    python -m kanedu.grading grade PATH... --out grades.csv [--timeout S] [--jobs N] [--feedback DIR]
    python -m kanedu.grading generate [--solutions DIR] [--exercises DIR] [--check]
    python -m kanedu.grading list

Exit status: 0 when the command ran (whatever the scores), 1 for ``generate --check`` when exercises/ is
out of date, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _positive(kind, name):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {text}")
        return value
    return parse


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="python -m kanedu.grading", description="Exercises and grading for kanedu.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    grade = sub.add_parser("grade", help="grade submitted notebooks into a CSV",
                           description="Run each submitted notebook in its own process, check every part on inputs "
                                       "drawn now, and write one CSV row per submission.")
    grade.add_argument("paths", nargs="+", metavar="PATH", help="a notebook, or a folder searched for notebooks "
                                                                "(e.g. one folder per student)")
    grade.add_argument("--out", required=True, metavar="CSV", help="the CSV to write (replaced atomically)")
    grade.add_argument("--timeout", type=_positive(float, "--timeout"), default=60.0, metavar="SECONDS",
                       help="limit for each cell and for each part's hidden check (default 60)")
    grade.add_argument("--total-timeout", type=_positive(float, "--total-timeout"), default=None, metavar="SECONDS",
                       help="limit for a whole submission, reruns included (default 10 x --timeout, at least 300)")
    grade.add_argument("--memory", type=_positive(int, "--memory"), default=4096, metavar="MIB",
                       help="address-space limit of each submission's process in MiB (default 4096)")
    grade.add_argument("--jobs", type=_positive(int, "--jobs"), default=1, metavar="N",
                       help="submissions graded in parallel (default 1)")
    grade.add_argument("--feedback", metavar="DIR", help="also write one Markdown feedback file per submission here")
    grade.add_argument("--seed", type=int, default=None,
                       help="seed for the hidden inputs (default: a fresh one per submission, drawn at grading time)")
    grade.add_argument("--no-progress", action="store_true", help="no progress bar")

    gen = sub.add_parser("generate", help="write exercises/ from solutions/",
                         description="Replace every solution block of solutions/*.ipynb by a stub and write "
                                     "the result to exercises/.")
    gen.add_argument("--solutions", default="solutions", metavar="DIR", help="solution notebooks (default solutions)")
    gen.add_argument("--exercises", default="exercises", metavar="DIR", help="where to write (default exercises)")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if exercises/ is out of date")

    listing = sub.add_parser("list", help="list the exercises and their parts")
    return parser, {"grade": grade, "generate": gen, "list": listing}


def _grade(args, parser) -> int:
    from .grader import Settings, UsageError, find_submissions, grade_all, write_csv, write_feedback

    out = Path(args.out)
    if out.is_dir():
        parser.error(f"--out {args.out}: is a folder; give a file name such as grades.csv")
    if not out.parent.is_dir():
        parser.error(f"--out {args.out}: the folder {out.parent} does not exist")
    if args.feedback and Path(args.feedback).exists() and not Path(args.feedback).is_dir():
        parser.error(f"--feedback {args.feedback}: exists and is not a folder")
    if args.memory < 512:
        parser.error(f"--memory {args.memory}: at least 512 MiB are needed to import torch")
    try:
        import IPython  # noqa: F401
    except ImportError:
        parser.error("the grader runs notebooks in IPython: pip install ipython")
    try:
        submissions = find_submissions(args.paths)
    except UsageError as exc:
        parser.error(str(exc))
    total = args.total_timeout if args.total_timeout is not None else max(300.0, 10 * args.timeout)
    settings = Settings(cell_timeout=args.timeout, total_timeout=total, memory_bytes=args.memory * 2**20,
                        seed=args.seed)
    grades = grade_all(submissions, settings, jobs=args.jobs, progress=not args.no_progress)
    write_csv(grades, out)
    if args.feedback:
        write_feedback(grades, args.feedback)
    counts = {}
    for g in grades:
        counts[g.status] = counts.get(g.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"graded {len(grades)} submission{'s' if len(grades) != 1 else ''} ({summary}) -> {out}"
          + (f", feedback in {args.feedback}" if args.feedback else ""))
    return 0


def _generate(args, parser) -> int:
    from .generate import GenerationError, generate

    try:
        changed = generate(args.solutions, args.exercises, check=args.check)
    except GenerationError as exc:
        parser.error(str(exc))
    if args.check:
        if changed:
            print("exercises are out of date; run `python -m kanedu.grading generate`:\n  " + "\n  ".join(changed))
            return 1
        print(f"{args.exercises}{os.sep} is up to date")
        return 0
    print("\n".join(f"wrote {p}" for p in changed) if changed else f"{args.exercises}{os.sep} was already up to date")
    return 0


def _list() -> int:
    from .registry import EXERCISES

    for e in EXERCISES.values():
        print(f"{e.id}  exercises/{e.notebook}.ipynb  {e.title} ({e.max_points} points)")
        for p in e.parts:
            print(f"    {p.name:<24} {p.points} pt  ~{p.minutes} min  {p.title}")
    return 0


def main(argv=None) -> int:
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if args.command == "grade":
        return _grade(args, commands["grade"])
    if args.command == "generate":
        return _generate(args, commands["generate"])
    if args.command == "list":
        return _list()
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
