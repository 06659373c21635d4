"""Exercise notebooks: generated from solutions/, up to date, and following the lesson conventions."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kanedu.grading import EXERCISES
from kanedu.grading.generate import GenerationError, dumps, generate, generate_notebook, read_notebook
from tools import launch

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
BOTH = [(kind, p) for p in SOLUTIONS for kind in ("solutions", "exercises")]


def _source(cell):
    return "".join(cell["source"])


def _lesson_setup_cell():
    lesson = json.loads((ROOT / "notebooks" / "01_kolmogorov_arnold_theorem.ipynb").read_text(encoding="utf-8"))
    return _source(lesson["cells"][1])


def test_exercises_are_up_to_date_with_solutions():
    stale = generate(ROOT / "solutions", ROOT / "exercises", check=True)
    assert not stale, "run `python -m kanedu.grading generate`: " + "; ".join(stale)


def test_generate_check_exits_1_when_an_exercise_is_stale(tmp_path):
    exercises = tmp_path / "exercises"
    assert generate(ROOT / "solutions", exercises) == [str(exercises / p.name) for p in SOLUTIONS]
    target = exercises / SOLUTIONS[0].name
    target.write_text(target.read_text(encoding="utf-8").replace("replace this line", "edited by hand"),
                      encoding="utf-8")
    cmd = [sys.executable, "-m", "kanedu.grading", "generate", "--solutions", str(ROOT / "solutions"),
           "--exercises", str(exercises), "--check"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1 and "out of date" in proc.stdout and target.name in proc.stdout
    assert generate(ROOT / "solutions", exercises) == [str(target)], "regenerating rewrites only the stale file"
    assert generate(ROOT / "solutions", exercises, check=True) == []


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_answer_becomes_a_stub_naming_its_part(path):
    exercise = EXERCISES[read_notebook(path)["metadata"]["kanedu"]["exercise"]]
    generated = generate_notebook(read_notebook(path), path)
    text = "\n".join(_source(c) for c in generated["cells"])
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert "assert_all_passed" not in text, "instructor-only blocks are removed"
    for part in exercise.parts:
        assert f'raise NotImplementedError("{part.name}: replace this line with your code")' in text, part.name
        assert f'check("{part.name}", {part.answer})' in text, part.name


def _nb(cells, exercise="ex02"):
    return {"cells": [{"cell_type": kind, "id": f"c{i}", "metadata": {}, "source": src,
                       **({"outputs": [{"output_type": "stream", "name": "stdout", "text": "x"}],
                           "execution_count": 3} if kind == "code" else {})}
                      for i, (kind, src) in enumerate(cells)],
            "metadata": {"kanedu": {"exercise": exercise}}, "nbformat": 4, "nbformat_minor": 5}


def test_a_block_inside_a_method_is_stubbed_at_its_indentation_and_outputs_are_cleared():
    source = "def fit_coef(x, y, t, k):\n    B = 1\n    # BEGIN SOLUTION\n    return B\n    # END SOLUTION\n"
    nb = _nb([("code", source)])
    cell = generate_notebook(nb)["cells"][0]
    assert _source(cell) == ('def fit_coef(x, y, t, k):\n    B = 1\n'
                             '    raise NotImplementedError("ex02.fit_coef: replace this line with your code")')
    assert cell["outputs"] == [] and cell["execution_count"] is None


def test_markdown_solution_blocks_are_removed_and_badges_point_at_exercises():
    md = ("# T\n<!-- BEGIN SOLUTION -->\nsecret\n<!-- END SOLUTION -->\n"
          "(https://colab.research.google.com/github/o/r/blob/main/solutions/02_bsplines.ipynb) "
          "(https://mybinder.org/v2/gh/o/r/main?labpath=solutions%2F02_bsplines.ipynb)")
    text = _source(generate_notebook(_nb([("markdown", md)]))["cells"][0])
    assert "secret" not in text and "solutions" not in text
    assert "blob/main/exercises/02_bsplines.ipynb" in text and "labpath=exercises%2F02_bsplines.ipynb" in text


@pytest.mark.parametrize("source, message", [
    ("def fit_coef(x):\n    # BEGIN SOLUTION\n    return x\n", "never closed"),
    ("def fit_coef(x):\n    return x\n    # END SOLUTION\n", "without"),
    ("def helper(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n", "not inside the answer"),
    ("def fit_coef(x:\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n", "valid Python"),
])
def test_malformed_solution_markers_are_clear_errors(source, message):
    with pytest.raises(GenerationError, match=message):
        generate_notebook(_nb([("code", source)]), "solutions/02_bsplines.ipynb")


def test_a_notebook_of_no_registered_exercise_is_an_error():
    with pytest.raises(GenerationError, match="no registered exercise"):
        generate_notebook({"cells": [], "metadata": {}, "nbformat": 4}, "solutions/99_nothing.ipynb")


@pytest.mark.parametrize("kind, path", BOTH, ids=lambda v: v if isinstance(v, str) else v.stem)
def test_notebooks_follow_the_lesson_conventions(kind, path):
    nb_path = ROOT / kind / path.name
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    assert nb_path.read_text(encoding="utf-8") == dumps(nb), "written the way nbformat writes notebooks"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    exercise = EXERCISES[nb["metadata"]["kanedu"]["exercise"]]
    assert path.stem == exercise.notebook
    title = _source(nb["cells"][0])
    assert title.startswith(f"# Exercises {path.stem[:2]}: {exercise.title}\n"), title[:80]
    assert launch.badges(f"{kind}/{path.name}") in title, "badges at its own path (tools/launch.py)"
    assert f"](../notebooks/{path.name})" in title, "links its lesson"
    assert _source(nb["cells"][1]) == _lesson_setup_cell(), "the lessons' Colab-guarded setup cell"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "committed without outputs"
    markdown = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    for i, part in enumerate(exercise.parts, 1):
        points = f"{part.points} point{'s' if part.points != 1 else ''}"
        assert f"## Part {i}: {part.title} ({points})" in markdown, part.name
        assert f"*About {part.minutes} minutes of work; the check runs in under {part.seconds:g} s.*" in markdown
        assert f"| {i} | {part.title} | `{part.answer}` | {part.points} | ~{part.minutes} min |" in markdown
    assert re.search(r"<details><summary>Hint</summary>", markdown)


def test_every_exercise_has_three_to_five_parts_with_points_hints_and_times():
    assert len(EXERCISES) >= 6
    for exercise in EXERCISES.values():
        assert 3 <= len(exercise.parts) <= 5, exercise.id
        for part in exercise.parts:
            assert part.points > 0 and part.minutes > 0 and part.seconds > 0 and len(part.hint) > 20, part.name
            assert part.name.startswith(exercise.id + ".")
