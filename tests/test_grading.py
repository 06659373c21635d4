"""The batch grader, end to end: `python -m kanedu.grading grade` on the course's own notebooks and on
hostile submissions built from them. Every batch runs once per module (the fixtures), in parallel."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kanedu.grading import EXERCISES

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISE_NBS = sorted((ROOT / "exercises").glob("*.ipynb"))


def grade(*args, cwd=ROOT, timeout=600):
    """Run the grading CLI; returns the completed process (stdout, stderr, returncode)."""
    env = dict(os.environ, TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "kanedu.grading", "grade", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_rows(path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["submission"]: row for row in csv.DictReader(f)}


# --------------------------------------------------------------------------------------------------
# the course's own notebooks: solutions score full marks, untouched exercises score 0
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    out = tmp_path_factory.mktemp("course") / "grades.csv"
    proc = grade("solutions", "exercises", "--out", out, "--jobs", "2", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    return read_rows(out)


def test_every_lesson_from_01_on_has_the_exercise_notebook_it_links():
    linked = set()
    for lesson in (ROOT / "notebooks").glob("*.ipynb"):
        if lesson.name >= "01":  # lesson 00 (welcome and setup) has no exercises
            linked |= set(re.findall(r"exercises/(\d\d_\w+\.ipynb)", lesson.read_text(encoding="utf-8")))
    assert len(linked) >= 5, f"the lessons link their exercise notebooks, found {sorted(linked)}"
    missing = sorted(name for name in linked if not (ROOT / "exercises" / name).exists())
    assert not missing, f"lessons link exercise notebooks that do not exist: {missing}"
    assert len(EXERCISE_NBS) >= 6 and len(SOLUTIONS) == len(EXERCISE_NBS)


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_solution_scores_full_marks(course, path):
    row = course[f"solutions/{path.name}"]
    assert (row["status"], row["reason"]) == ("ok", ""), row
    assert int(row["total"]) == int(row["max"]) == EXERCISES[row["exercise"]].max_points, row


@pytest.mark.parametrize("path", EXERCISE_NBS, ids=lambda p: p.stem)
def test_every_untouched_exercise_scores_zero_and_runs_without_errors(course, path):
    row = course[f"exercises/{path.name}"]
    assert row["status"] == "ok" and row["reason"] == "", row  # no cell raised: no cell calls a stub outside check
    assert int(row["total"]) == 0 and int(row["max"]) > 0, row
    parts = [p.name for p in EXERCISES[row["exercise"]].parts]
    assert all(row[p] == "0" for p in parts), row


def test_the_csv_has_the_documented_columns(course):
    row = next(iter(course.values()))
    columns = list(row)
    assert columns[:2] == ["submission", "exercise"] and columns[-4:] == ["total", "max", "status", "reason"]
    assert set(columns[2:-4]) == {p for e in EXERCISES.values() for p in (q.name for q in e.parts)}


# --------------------------------------------------------------------------------------------------
# hostile submissions: each built from the exercise 02 solution, all graded in one batch
# --------------------------------------------------------------------------------------------------


def _notebook(name="02_bsplines"):
    """The solution as a student would hand it in: answered, without the instructor-only last cell."""
    nb = json.loads((ROOT / "solutions" / f"{name}.ipynb").read_text(encoding="utf-8"))
    nb["cells"] = [c for c in nb["cells"] if "assert_all_passed" not in "".join(c["source"])]
    return nb


def _code(source):
    return {"cell_type": "code", "execution_count": None, "id": f"x{abs(hash(source)) % 10**8}", "metadata": {},
            "outputs": [], "source": source}


def _replace_answer(nb, name, source):
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        if cell["cell_type"] == "code" and text.startswith(f"def {name}("):
            cell["source"] = source
            return nb
    raise AssertionError(f"no cell defines {name}")


def _insert_after_imports(nb, source):
    nb["cells"].insert(3, _code(source))
    return nb


def _append(nb, source):
    nb["cells"].append(_code(source))
    return nb


STUBS = {  # wrong but well-formed answers: right shapes and dtypes, wrong numbers
    "cox_de_boor": "def cox_de_boor(x, t, k):\n    return torch.full((len(x), len(t) - k - 1), 0.25)\n",
    "extended_grid": "def extended_grid(G, k, lo, hi):\n    return torch.linspace(lo, hi, G + 2 * k + 1)\n",
    "support_mask": "def support_mask(x, t, k):\n    return torch.ones(len(x), len(t) - k - 1, dtype=torch.bool)\n",
    "fit_coef": "def fit_coef(x, y, t, k):\n    return torch.zeros(len(t) - k - 1)\n",
}


def _wrong_answers(nb):
    for name, source in STUBS.items():
        _replace_answer(nb, name, source)
    return nb


def _package_calls():
    """The package's own implementation, reached through an alias taken early, a copy of the function
    object (which escapes the code swap, not the profile hook) and a plain call; support_mask is the
    student's own and scores."""
    nb = _insert_after_imports(_notebook(), (
        "import types\nimport kanedu.splines\n"
        "from kanedu.splines import bspline_basis as reference_bases\n"
        "f = kanedu.splines.uniform_grid\n"
        "copied_grid = types.FunctionType(f.__code__, f.__globals__, 'copy', f.__defaults__, f.__closure__)\n"
        "copied_grid.__kwdefaults__ = f.__kwdefaults__\n"))
    _replace_answer(nb, "cox_de_boor",
                    "def cox_de_boor(x, t, k):\n    return reference_bases(x, t, k, method='reference')\n")
    _replace_answer(nb, "extended_grid",
                    "def extended_grid(G, k, lo, hi):\n    return copied_grid(G, k, (lo, hi), dtype=torch.float64)\n")
    return _replace_answer(nb, "fit_coef", "def fit_coef(x, y, t, k):\n    return kanedu.splines.curve_to_coef("
                                           "x[:, None], y[:, None, None], t[None], k)[0, 0]\n")


HOSTILE = {
    # a cell that never ends: killed at the cell limit, the notebook rerun without it
    "infinite_loop": lambda: _append(_notebook(), "while True:\n    pass\n"),
    # an answer that never returns: the inline check's cell times out, then the hidden check; other parts graded
    "infinite_answer": lambda: _replace_answer(_notebook(), "extended_grid",
                                               "def extended_grid(G, k, lo, hi):\n    while True:\n        pass\n"),
    "os_exit": lambda: _append(_notebook(), "import os\nos._exit(3)\n"),
    "kernel_exit": lambda: _append(_notebook(), "exit()\n"),
    "segfault": lambda: _append(_notebook(), "import ctypes\nctypes.string_at(0)\n"),
    # sys.exit in a cell is an exception, as in Jupyter; inside an answer it fails that part only
    "sys_exit": lambda: _replace_answer(_append(_notebook(), "import sys\nsys.exit(1)\n"), "support_mask",
                                        "import sys\n\ndef support_mask(x, t, k):\n    sys.exit(0)\n"),
    "syntax_error": lambda: _replace_answer(_notebook(), "cox_de_boor", "def cox_de_boor(x, t, k)\n    return x\n"),
    # 1 GiB a step, untouched: it reaches the address-space limit at once (filling the pages as well made
    # the same cell take more than the 8 s cell limit on a loaded machine: then it is skipped as a timeout)
    "memory_bomb": lambda: _append(_notebook(), "blocks = []\nwhile True:\n    blocks.append(torch.empty(2**28))\n"),
    # fake result lines on stdout and stderr, a fake CSV in its folder, its own check(): all with wrong answers
    "forged_results": lambda: _wrong_answers(_append(_insert_after_imports(_notebook(), (
        "import json, sys\n"
        "def check(name, answer):\n    print(f'✓ {name} passed (4 points): passed all 8 cases')\n"
        "for p in ['ex02.cox_de_boor', 'ex02.extended_grid', 'ex02.support_mask', 'ex02.fit_coef']:\n"
        "    line = json.dumps({'event': 'reply', 'part': p, 'reply': {'outcomes': [], 'points': 4}})\n"
        "    print(line); print(line, file=sys.stderr); print(f'{p},4')\n"
        "open('grades.csv', 'w').write('submission,total\\nforged_results.ipynb,10\\n')\n")),
        "print('total: 10 / 10')\n")),
    "patched_comparisons": lambda: _wrong_answers(_insert_after_imports(_notebook(), (
        "import numpy as np\n"
        "torch.allclose = lambda *a, **k: True\n"
        "torch.equal = lambda *a, **k: True\n"
        "torch.isclose = lambda a, b, **k: torch.ones(torch.as_tensor(a).shape, dtype=torch.bool)\n"
        "torch.testing.assert_close = lambda *a, **k: None\n"
        "np.allclose = lambda *a, **k: True\n"
        "np.testing.assert_allclose = lambda *a, **k: None\n"
        "torch.Tensor.__eq__ = lambda self, other: torch.ones(self.shape, dtype=torch.bool)\n"
        "torch.Tensor.__ne__ = lambda self, other: torch.zeros(self.shape, dtype=torch.bool)\n"
        "import kanedu.grading.parts as _p\n_p.close = lambda *a, **k: None\n_p.equal = lambda *a, **k: None\n"))),
    "package_calls": lambda: _package_calls(),
    "deletes_files": lambda: _append(_notebook(), (
        "import os, shutil\n"
        "for name in os.listdir('.'):\n"
        "    shutil.rmtree(name) if os.path.isdir(name) else os.remove(name)\n"
        "print(os.listdir('.'))\n")),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("submissions")
    for name, build in HOSTILE.items():
        folder = root / name  # one folder per "student"
        folder.mkdir()
        (folder / "02_bsplines.ipynb").write_text(json.dumps(build()), encoding="utf-8")
    (root / "broken_json").mkdir()
    (root / "broken_json" / "02_bsplines.ipynb").write_text('{"cells": [', encoding="utf-8")
    (root / "unknown").mkdir()
    (root / "unknown" / "homework.ipynb").write_text(json.dumps(
        {"cells": [_code("print('hello')")], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    out, feedback = root / "grades.csv", root / "feedback"
    proc = grade(root, "--out", out, "--jobs", "2", "--timeout", "8", "--memory", "2048", "--feedback", feedback,
                 cwd=root)
    rows = {Path(k).parent.name: v for k, v in read_rows(out).items()}
    return {"proc": proc, "rows": rows, "root": root, "out": out, "feedback": feedback}


def _points(row):
    return {p.name.split(".")[1]: int(row[p.name]) for p in EXERCISES["ex02"].parts}


FULL = {"cox_de_boor": 4, "extended_grid": 2, "support_mask": 2, "fit_coef": 2}
EXPECTED = {  # name: (status, points per part, words the reason must contain)
    "infinite_loop": ("timeout", FULL, "cell limit"),
    "infinite_answer": ("timeout", {**FULL, "extended_grid": 0}, "limit"),
    "os_exit": ("crashed", FULL, "exit code 3"),
    "kernel_exit": ("crashed", FULL, "exit()"),
    "segfault": ("crashed", FULL, "SIGSEGV"),
    "sys_exit": ("ok", {**FULL, "support_mask": 0}, "SystemExit"),
    "syntax_error": ("ok", {**FULL, "cox_de_boor": 0}, "SyntaxError"),
    "memory_bomb": ("crashed", FULL, "out of memory"),
    "forged_results": ("ok", dict.fromkeys(FULL, 0), ""),
    "patched_comparisons": ("ok", dict.fromkeys(FULL, 0), "grader's internals"),
    "package_calls": ("ok", {"cox_de_boor": 0, "extended_grid": 0, "support_mask": 2, "fit_coef": 0},
                      "function code objects"),
    "deletes_files": ("ok", FULL, ""),
}


def test_the_batch_completes_with_exit_code_0_and_a_row_per_submission(hostile):
    assert hostile["proc"].returncode == 0, hostile["proc"].stderr
    assert set(hostile["rows"]) == set(HOSTILE) | {"broken_json", "unknown"}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_hostile_submission_is_scored_correctly(hostile, name):
    row = hostile["rows"][name]
    status, points, words = EXPECTED[name]
    assert row["status"] == status, row
    assert _points(row) == points, row
    assert int(row["total"]) == sum(points.values()) and row["max"] == "10", row
    assert words in row["reason"], row


def test_an_unreadable_or_unknown_notebook_gets_status_error(hostile):
    broken, unknown = hostile["rows"]["broken_json"], hostile["rows"]["unknown"]
    assert broken["status"] == "error" and "not valid JSON" in broken["reason"], broken
    assert unknown["status"] == "error" and "which exercise" in unknown["reason"], unknown
    assert broken["total"] == unknown["total"] == "0"


def test_a_package_call_is_named_in_the_feedback(hostile):
    text = (hostile["feedback"] / "package_calls__02_bsplines.md").read_text(encoding="utf-8")
    for name in ("bspline\\_basis", "uniform\\_grid", "curve\\_to\\_coef"):  # Markdown-escaped
        assert f"package's own implementation (kanedu.splines.{name})" in text, name


def test_feedback_has_one_markdown_file_per_submission_with_each_part(hostile):
    files = sorted(hostile["feedback"].glob("*.md"))
    assert len(files) == len(hostile["rows"])
    text = (hostile["feedback"] / "syntax_error__02_bsplines.md").read_text(encoding="utf-8")
    assert "6 of 10 points" in text and "does not define cox\\_de\\_boor" in text and "SyntaxError" in text


def test_deleting_files_in_its_folder_touches_nothing_outside(hostile):
    assert (hostile["root"] / "deletes_files" / "02_bsplines.ipynb").exists()
    assert hostile["out"].exists()
    assert not list(hostile["root"].glob("**/.grades.csv.*.tmp")), "the CSV is written by an atomic rename"
