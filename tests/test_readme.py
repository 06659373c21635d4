"""The README is the front door: what the course is, how to launch it, the course map, grading,
benchmarks with a generated figure, troubleshooting, pykan, references and license.

The course map and the launch badges are generated (``tools/course_map.py``) from the course design's
map (``shared/COURSE.md`` beside the clone, when it is there) and from the notebooks that exist.
"""

import json
import re
from pathlib import Path

import pytest

from tools import course_map, launch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title):
    parts = README.split(f"\n## {title}\n", 1)
    assert len(parts) == 2, f"README has no section '## {title}'"
    return parts[1].split("\n## ", 1)[0]


def _block(key):
    begin, end = course_map.MARKERS[key]
    return README.split(begin, 1)[1].split(end, 1)[0].strip()


def _map_rows():
    rows = []
    for line in _block("map").splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append(cells)
    return rows


def test_the_course_map_lists_lessons_00_to_11_in_order():
    assert [r[0] for r in _map_rows()] == [f"{n:02d}" for n in range(12)]


def test_each_existing_lesson_is_linked_with_its_title_time_and_exercise():
    for number, lesson, _covers, time, exercise in _map_rows():
        notebook = sorted((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
        ex = sorted((ROOT / "exercises").glob(f"{number}_*.ipynb"))
        if notebook:
            title = json.loads(notebook[0].read_text(encoding="utf-8"))["cells"][0]["source"][0]
            name = title.strip().split(": ", 1)[1]
            assert lesson == f"[{name}](notebooks/{notebook[0].name})", f"row {number}: {lesson}"
            assert time == course_map.estimated_time(notebook[0]) and time.endswith(" min"), f"row {number}: {time}"
        else:
            assert "](" not in lesson and "in preparation" in lesson, f"row {number} links a missing notebook"
        assert exercise == (f"[exercise {number}](exercises/{ex[0].name})" if ex else ""), f"row {number}"


def test_the_course_map_is_generated_from_course_md():
    course = course_map.find_course_md()
    if course is None:
        pytest.skip(f"COURSE.md not beside the clone ({[str(p) for p in course_map.course_md_candidates()]})")
    rows = course_map.parse_course_map(course.read_text(encoding="utf-8"))
    assert [r[1] for r in rows] == [re.sub(r"^\[(.*)\]\(.*\)$|^(.*) \*\(in preparation\)\*$", r"\1\2", r[1])
                                    for r in _map_rows()], "lesson names as in COURSE.md"
    assert course_map.render(README, rows) == README, "README.md is out of date: run `python tools/course_map.py`"


def test_the_launch_badges_are_pinned_and_generated():
    assert _block("launch") == course_map.launch_badges()
    assert launch.REF in _block("launch") and "/main" not in _block("launch")


def test_every_relative_link_resolves():
    for target in re.findall(r"\]\(([^)#\s]+)\)", README):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target).exists(), f"README links {target}, which does not exist"


def test_it_says_what_the_course_is_and_for_whom_with_the_two_commands():
    intro = README.split("\n## ", 1)[0]
    assert "Kolmogorov-Arnold" in intro and "**Who it is for.**" in intro
    commands = re.findall(r"```bash\n(.*?)\n```", _section("Start"), flags=re.S)
    assert [c.split()[:2] for c in commands] == [["make", "lab"], ["make", "test"]]


def test_it_says_how_to_grade_a_folder_of_submissions():
    grading = _section("Grading")
    assert "python -m kanedu.grading grade submissions/ --out grades.csv" in grading


def test_the_benchmark_figure_exists_and_a_benchmark_script_writes_it():
    bench = _section("Benchmarks")
    figures = re.findall(r"!\[[^\]]*\]\((benchmarks/[^)]+\.png)\)", bench)
    assert figures, "the Benchmarks section shows a figure"
    for fig in figures:
        assert (ROOT / fig).is_file(), fig
        writers = [p for p in (ROOT / "benchmarks").glob("*.py") if Path(fig).name in p.read_text(encoding="utf-8")]
        assert writers, f"no script under benchmarks/ writes {fig}"
        assert f"python {writers[0].relative_to(ROOT)}" in bench, "the README says how to regenerate it"


def test_troubleshooting_covers_cpu_colab_and_binder():
    trouble = _section("Troubleshooting")
    for topic in ("**CPU only.**", "**Colab.**", "**Binder.**"):
        assert topic in trouble


def test_references_and_license():
    assert "arXiv:2404.19756" in _section("References")
    assert "MIT" in _section("License")
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
