"""Generate ``exercises/`` from ``solutions/``: one source for every exercise notebook.

A solution notebook marks its answers the otter/nbgrader way:

* in a **code cell**, the lines from ``# BEGIN SOLUTION`` to ``# END SOLUTION`` inside a function (or
  a method) become ``raise NotImplementedError("exNN.part: ...")``, indented like the marker, naming
  the part whose answer (the top-level ``def``/``class`` around the block) it belongs to. A block at
  the top level of a cell is instructor-only and is removed; a cell left empty is dropped.
* in a **markdown cell**, the lines from ``<!-- BEGIN SOLUTION -->`` to ``<!-- END SOLUTION -->`` are
  removed, and the launch badges' ``solutions/`` paths become ``exercises/``.

Outputs and execution counts are cleared. The notebook is written the way ``nbformat`` writes it
(sorted keys, one-space indent, sources as lists of lines), so a regenerated file is byte-identical.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import tempfile
from pathlib import Path

from .parts import Exercise
from .registry import find_exercise

__all__ = ["GenerationError", "generate_notebook", "generate", "read_notebook", "dumps", "exercise_of"]

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
MD_BEGIN, MD_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
_BADGE_PATHS = [(re.compile(r"(/blob/[^/\s)]+/)solutions/"), r"\1exercises/"),
                (re.compile(r"(labpath=)solutions%2F"), r"\1exercises%2F")]


class GenerationError(ValueError):
    """A solution notebook that cannot be turned into an exercise (the message says where and why)."""


def read_notebook(path) -> dict:
    """The JSON of a notebook file, with a clear error for files that are not notebooks."""
    path = Path(path)
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GenerationError(f"{path}: not a readable notebook ({exc})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        raise GenerationError(f"{path}: not a version-4 Jupyter notebook")
    return nb


def dumps(nb: dict) -> str:
    """Serialise like ``nbformat.write``: sorted keys, indent 1, non-ASCII kept, trailing newline."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def exercise_of(nb: dict, path) -> Exercise:
    """The registered exercise a notebook belongs to (its ``kanedu`` metadata, else its file name)."""
    meta = nb.get("metadata", {}).get("kanedu", {})
    key = meta.get("exercise") if isinstance(meta, dict) else None
    exercise = find_exercise(key) if isinstance(key, str) else None
    exercise = exercise or find_exercise(Path(path).stem)
    if exercise is None:
        raise GenerationError(f"{path}: no registered exercise (set metadata kanedu.exercise or name the file "
                              "like the exercise, e.g. 02_bsplines.ipynb)")
    return exercise


def _blocks(lines: list[str], begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """(first, last) line indices of each marked block, checking that markers pair up."""
    blocks, start = [], None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == begin:
            if start is not None:
                raise GenerationError(f"{where}: line {i + 1}: {begin!r} inside another solution block")
            start = i
        elif text == end:
            if start is None:
                raise GenerationError(f"{where}: line {i + 1}: {end!r} without {begin!r}")
            blocks.append((start, i))
            start = None
    if start is not None:
        raise GenerationError(f"{where}: line {start + 1}: {begin!r} is never closed by {end!r}")
    return blocks


def _code_cell(source: str, exercise: Exercise, where: str) -> str:
    lines = _lines(source)
    blocks = _blocks(lines, BEGIN, END, where)
    if not blocks:
        return source
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise GenerationError(f"{where}: a cell with solution markers must be valid Python ({exc.msg}, "
                              f"line {exc.lineno})") from None
    answers = {p.answer: p for p in exercise.parts}
    out, pos = [], 0
    for first, last in blocks:
        out.extend(lines[pos:first])
        pos = last + 1
        indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
        if not indent:  # instructor-only block at the top level
            continue
        owner = next((node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.ClassDef))
                      and node.lineno <= first + 1 <= node.end_lineno), None)
        if owner is None or owner.name not in answers:
            names = ", ".join(sorted(answers))
            raise GenerationError(f"{where}: line {first + 1}: the solution block is not inside the answer of a "
                                  f"part of {exercise.id} (a top-level def or class named one of: {names})")
        part = answers[owner.name]
        out.append(f'{indent}raise NotImplementedError("{part.name}: replace this line with your code")\n')
    out.extend(lines[pos:])
    result = "".join(out)
    try:
        ast.parse(result)
    except SyntaxError as exc:
        raise GenerationError(f"{where}: the exercise version of this cell is not valid Python ({exc.msg}, line "
                              f"{exc.lineno}); keep code that must stay outside the solution markers") from None
    return result.rstrip("\n") if result.strip() else ""


def _markdown_cell(source: str, where: str) -> str:
    lines = _lines(source)
    out, pos = [], 0
    for first, last in _blocks(lines, MD_BEGIN, MD_END, where):
        out.extend(lines[pos:first])
        pos = last + 1
    out.extend(lines[pos:])
    text = "".join(out)
    for pattern, replacement in _BADGE_PATHS:
        text = pattern.sub(replacement, text)
    text = re.sub(r"\n{3,}", "\n\n", text)  # a removed block leaves no double gap
    return text.strip("\n")


def generate_notebook(nb: dict, path="solution.ipynb") -> dict:
    """The exercise notebook for the solution notebook ``nb`` (read from ``path``, named in errors)."""
    exercise = exercise_of(nb, path)
    out = copy.deepcopy(nb)
    out.setdefault("metadata", {}).setdefault("kanedu", {})["exercise"] = exercise.id
    cells = []
    for i, cell in enumerate(nb["cells"]):
        where = f"{path}, cell {i + 1}"
        kind = cell.get("cell_type")
        new = copy.deepcopy(cell)
        if kind == "code":
            text = _code_cell(_source(cell), exercise, where)
            new["outputs"], new["execution_count"] = [], None
        elif kind == "markdown":
            text = _markdown_cell(_source(cell), where)
        else:
            text = _source(cell)
        if not text.strip() and _source(cell).strip():
            continue  # the whole cell was a solution
        new["source"] = _lines(text)
        cells.append(new)
    out["cells"] = cells
    return out


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def generate(solutions_dir="solutions", exercises_dir="exercises", *, check: bool = False) -> list[str]:
    """Write ``exercises_dir/NAME.ipynb`` for every ``solutions_dir/NAME.ipynb``.

    With ``check=True`` nothing is written. Returns the problems (``check``) or the files written:
    a path per exercise that is missing or differs from what the solution generates, and per notebook
    in ``exercises_dir`` that has no solution.
    """
    solutions, exercises = Path(solutions_dir), Path(exercises_dir)
    if not solutions.is_dir():
        raise GenerationError(f"{solutions}: no such directory of solution notebooks")
    sources = sorted(solutions.glob("*.ipynb"))
    if not sources:
        raise GenerationError(f"{solutions}: no solution notebooks (*.ipynb) in it")
    if not check:
        exercises.mkdir(parents=True, exist_ok=True)
    changed = []
    for src in sources:
        text = dumps(generate_notebook(read_notebook(src), src))
        dst = exercises / src.name
        current = dst.read_text(encoding="utf-8") if dst.exists() else None
        if current != text:
            changed.append(f"{dst}: {'missing' if current is None else 'out of date'}" if check else str(dst))
            if not check:
                _write_atomic(dst, text)
    if check and exercises.is_dir():
        names = {s.name for s in sources}
        changed += [f"{p}: no solution notebook {solutions / p.name}" for p in sorted(exercises.glob("*.ipynb"))
                    if p.name not in names]
    return changed
