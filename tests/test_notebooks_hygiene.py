"""Every committed notebook (lessons, exercises, solutions) is clean, named in course order and reachable.

* no outputs, no execution counts, no saved widget state, kernelspec ``python3``;
* file names ``NN_topic.ipynb``; a lesson's title is ``# Lesson NN: ...`` with its own number, and an
  exercise or solution belongs to a lesson number of the course (00-11) and, once that lesson exists,
  has the lesson's file name;
* every lesson is linked from the README;
* no multi-line ``$$`` block inside a Markdown blockquote (JupyterLab renders the continuation lines'
  ``>`` characters inside the formula: lesson 01's theorem statement did).
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("notebooks", "exercises", "solutions")
NOTEBOOKS = [p for kind in KINDS for p in sorted((ROOT / kind).glob("*.ipynb"))]
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAME = re.compile(r"^(\d\d)_[a-z0-9]+(?:_[a-z0-9]+)*\.ipynb$")
COURSE_NUMBERS = {f"{n:02d}" for n in range(12)}  # lessons 00-11 of the course map


def _id(path):
    return f"{path.parent.name}/{path.name}"


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_course_has_notebooks():
    assert LESSONS and len(NOTEBOOKS) > len(LESSONS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_committed_without_outputs_or_widget_state_with_kernel_python3(path):
    nb = _load(path)
    assert nb.get("nbformat") == 4
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", "kernelspec must be python3"
    assert "widgets" not in nb["metadata"], "saved widget state in the notebook metadata (clear it before committing)"
    for i, cell in enumerate(nb["cells"], 1):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {i} has outputs: commit notebooks without them"
            assert cell.get("execution_count") is None, f"cell {i} has an execution count"
        assert "widgets" not in cell.get("metadata", {}), f"cell {i} carries widget state"
        assert not cell.get("attachments"), f"cell {i} has attachments"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_named_nn_topic_in_course_order(path):
    match = NAME.match(path.name)
    assert match, f"{_id(path)}: notebook names are NN_topic.ipynb (lower case, underscores)"
    number = match.group(1)
    assert number in COURSE_NUMBERS, f"{_id(path)}: lesson number {number} is not in the course map (00-11)"
    if path.parent.name == "notebooks":
        title = _source(_load(path)["cells"][0]).splitlines()[0]
        assert title.startswith(f"# Lesson {number}: "), f"{_id(path)}: title must be '# Lesson {number}: ...'"
    else:
        lesson = [p for p in LESSONS if p.name[:2] == number]
        assert not lesson or lesson[0].name == path.name, f"{_id(path)} must be named like its lesson {lesson}"


def test_lesson_numbers_are_unique():
    numbers = [p.name[:2] for p in LESSONS]
    assert len(numbers) == len(set(numbers)), f"two lessons share a number: {numbers}"


@pytest.mark.parametrize("path", LESSONS, ids=_id)
def test_every_lesson_is_linked_from_the_readme(path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"](notebooks/{path.name})" in readme, f"README.md does not link {_id(path)}"


def multiline_display_math_in_blockquotes(markdown: str) -> list[int]:
    """Line numbers (1-based) of blockquote lines that open or close a ``$$`` block spanning lines."""
    bad, inside = [], False
    for number, line in enumerate(markdown.splitlines(), 1):
        quoted = line.lstrip().startswith(">")
        count = line.count("$$")
        if quoted and (inside or count % 2):  # a quoted line that opens, continues or closes a block
            bad.append(number)
        if count % 2:
            inside = not inside
    return bad


def test_the_blockquote_math_check_finds_lesson_01s_old_theorem_statement():
    old = "> **Theorem.** text\n> $$\n> f(x) = \\sum_q \\Phi_q(x)\n> $$\n> with continuous functions."
    assert multiline_display_math_in_blockquotes(old) == [2, 3, 4]
    assert multiline_display_math_in_blockquotes("> $$f(x) = \\sum_q \\Phi_q(x)$$\n> with") == []
    assert multiline_display_math_in_blockquotes("$$\nf(x) = 1\n$$\n> a quote") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_no_multiline_display_math_inside_a_blockquote(path):
    for i, cell in enumerate(_load(path)["cells"], 1):
        if cell["cell_type"] == "markdown":
            bad = multiline_display_math_in_blockquotes(_source(cell))
            assert not bad, (f"{_id(path)} cell {i}, lines {bad}: a multi-line $$ block inside a '>' quote renders "
                             "with stray '>' in JupyterLab; put the formula on one line or outside the quote")
