"""Write the README's generated blocks: the launch badges and the course map.

The course map comes from the course design's map (``COURSE.md``, section "Lessons (the course map)",
kept in ``shared/`` beside the repository): every lesson 00-11 with its name and what it covers. A
lesson whose notebook exists is linked, with its estimated time (from the notebook's title cell) and
its exercise notebook where there is one; a lesson not written yet is listed without links.

Run ``python tools/course_map.py [--course PATH/TO/COURSE.md]`` after adding a lesson or an exercise;
``--check`` exits 1 if the README is out of date. ``tests/test_readme.py`` checks the result.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import launch  # noqa: E402

README = ROOT / "README.md"
MARKERS = {
    "launch": ("<!-- BEGIN generated: launch badges (tools/course_map.py) -->",
               "<!-- END generated: launch badges -->"),
    "map": ("<!-- BEGIN generated: course map (tools/course_map.py, from COURSE.md) -->",
            "<!-- END generated: course map -->"),
}


def course_md_candidates() -> list[Path]:
    """Where the course design lives: ``shared/`` beside the clone (CI) or beside the worktrees."""
    return [ROOT.parent / "shared" / "COURSE.md", ROOT.parent.parent / "shared" / "COURSE.md"]


def find_course_md() -> Path | None:
    return next((p for p in course_md_candidates() if p.is_file()), None)


def parse_course_map(text: str) -> list[tuple[str, str, str]]:
    """``(number, name, what it covers)`` for every row of COURSE.md's course map table, in order."""
    section = text.split("## Lessons (the course map)", 1)
    if len(section) != 2:
        raise ValueError("COURSE.md has no section '## Lessons (the course map)'")
    rows = []
    for line in section[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"\d\d", cells[0]):
            rows.append((cells[0], cells[1], " | ".join(cells[2:]).replace("|", "\\|")))
    if not rows:
        raise ValueError("COURSE.md's course map has no lesson rows")
    return rows


def _notebook(folder: str, number: str) -> Path | None:
    found = sorted((ROOT / folder).glob(f"{number}_*.ipynb"))
    return found[0] if found else None


def estimated_time(path: Path) -> str:
    """"45 min" from the notebook's ``**Estimated time.** 45 minutes ...`` line ("" if it has none)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    text = "\n".join("".join(c["source"]) for c in nb["cells"][:3] if c["cell_type"] == "markdown")
    match = re.search(r"\*\*Estimated time\.\*\*\s*(?:About\s+)?(\d+(?:-\d+)?)\s*min", text)
    return f"{match.group(1)} min" if match else ""


def course_map(rows) -> str:
    """The README's course map table for the COURSE.md ``rows``."""
    out = ["| # | lesson | what you learn | time | exercise |", "|---|---|---|---|---|"]
    for number, name, covers in rows:
        lesson, exercise = _notebook("notebooks", number), _notebook("exercises", number)
        title = f"[{name}](notebooks/{lesson.name})" if lesson else f"{name} *(in preparation)*"
        time = estimated_time(lesson) if lesson else ""
        ex = f"[exercise {number}](exercises/{exercise.name})" if exercise else ""
        out.append(f"| {number} | {title} | {covers} | {time} | {ex} |")
    return "\n".join(out)


def launch_badges() -> str:
    """The README's launch badges: the whole course on Binder, lesson 00 on Colab."""
    first = sorted((ROOT / "notebooks").glob("00_*.ipynb"))
    colab = f"{launch.COLAB_BADGE}({launch.colab_url('notebooks/' + first[0].name)})" if first else ""
    binder = f"{launch.BINDER_BADGE}({launch.binder_url()})"
    return f"{binder} {colab}".strip()


def replace_block(text: str, key: str, body: str) -> str:
    begin, end = MARKERS[key]
    if begin not in text or end not in text:
        raise ValueError(f"README.md lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def render(readme: str, rows) -> str:
    return replace_block(replace_block(readme, "launch", launch_badges()), "map", course_map(rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--course", type=Path, default=None, help="COURSE.md (default: shared/COURSE.md nearby)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if README.md is out of date")
    args = parser.parse_args(argv)
    course = args.course or find_course_md()
    if course is None:
        parser.error(f"COURSE.md not found in {[str(p) for p in course_md_candidates()]}; pass --course")
    text = README.read_text(encoding="utf-8")
    new = render(text, parse_course_map(course.read_text(encoding="utf-8")))
    if args.check:
        print("README.md is up to date" if new == text else "README.md is out of date: run python tools/course_map.py")
        return 0 if new == text else 1
    README.write_text(new, encoding="utf-8")
    print(f"wrote the launch badges and the course map of {README.relative_to(ROOT)} from {course}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
