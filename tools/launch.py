"""Where the course is published, and the launch header every notebook starts with.

This module is the ONE place that names the repository and the release students launch. Every notebook
(lessons, exercises, solutions) opens with

* a title cell holding two badges, Colab and Binder, that open *this* notebook at ``REF``;
* a setup cell that installs kanedu, pinned to the same ``REF``, only when running on Colab (Colab
  opens one notebook alone and already ships torch and numpy; pip keeps them, see
  ``tests/test_launch.py``). Elsewhere the cell does nothing.

``REF`` is the release tag ``v<kanedu version>``, never a moving branch, so a notebook opened from a
badge runs against the package it was written for. Releasing means: bump ``kanedu/_version.py``, run
``python tools/launch.py``, commit, and tag that commit ``v<version>``.

Run ``python tools/launch.py`` to rewrite the headers of ``notebooks/`` and ``solutions/`` and then
regenerate ``exercises/`` from ``solutions/`` (``python -m kanedu.grading generate``: the generator
turns a solution's badges into the exercise's own, so both agree); ``--check`` only lists the notebooks
that differ and exits 1 if there are any.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kanedu._version import __version__  # noqa: E402
from kanedu.grading.generate import dumps, generate, read_notebook  # noqa: E402

OWNER, NAME = "kanedu-course", "kanedu"
REPOSITORY = f"https://github.com/{OWNER}/{NAME}"
REF = f"v{__version__}"
EDITED = ("notebooks", "solutions")  # exercises/ is generated from solutions/
KINDS = ("notebooks", "exercises", "solutions")

COLAB_BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
BINDER_BADGE = "[![Binder](https://mybinder.org/badge_logo.svg)]"
_BADGE_LINE = re.compile(r"^\[!\[(Open In Colab|Binder)\]\([^)]*\)\]\([^)]*\)[ \t]*$", re.M)


def colab_url(path: str) -> str:
    """Colab's URL for the notebook at ``path`` (relative to the repository root) at ``REF``."""
    return f"https://colab.research.google.com/github/{OWNER}/{NAME}/blob/{REF}/{path}"


def binder_url(path: str | None = None) -> str:
    """Binder's URL for JupyterLab on ``path`` at ``REF`` (the whole course when ``path`` is None)."""
    base = f"https://mybinder.org/v2/gh/{OWNER}/{NAME}/{REF}"
    return base + ("?urlpath=lab/tree/notebooks" if path is None else f"?labpath={quote(path, safe='')}")


def badges(path: str) -> str:
    """The two badge lines for the notebook at ``path``, e.g. ``"notebooks/02_bsplines.ipynb"``."""
    return f"{COLAB_BADGE}({colab_url(path)})\n{BINDER_BADGE}({binder_url(path)})"


SETUP_CELL = (
    "import sys\n"
    "\n"
    'if "google.colab" in sys.modules:  # Colab opens this notebook alone: install the course package\n'
    f'    get_ipython().run_line_magic("pip", "install -q git+{REPOSITORY}@{REF}")'
)


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def header_problems(nb: dict, path: str) -> list[str]:
    """What is wrong with the launch header of notebook ``nb`` stored at ``path`` (empty: nothing)."""
    cells = nb.get("cells", [])
    title = _source(cells[0]) if cells and cells[0].get("cell_type") == "markdown" else ""
    found = [m.group(0) for m in _BADGE_LINE.finditer(title)]
    problems = []
    if found != badges(path).split("\n"):
        problems.append(f"{path}: its badges must be exactly\n{badges(path)}\n  found {found}")
    setup = [c for c in cells if c.get("cell_type") == "code"][:1]
    if not setup or _source(setup[0]) != SETUP_CELL or cells.index(setup[0]) != 1:
        problems.append(f"{path}: cell 2 must be the Colab-guarded setup cell\n{SETUP_CELL}")
    return problems


def with_header(nb: dict, path: str) -> dict:
    """A copy of ``nb`` whose badges and setup cell are the ones for ``path``."""
    out = copy.deepcopy(nb)
    cells = out["cells"]
    if not cells or cells[0].get("cell_type") != "markdown":
        raise ValueError(f"{path}: the first cell must be the markdown title cell")
    title = _source(cells[0])
    if _BADGE_LINE.search(title):
        first = True

        def replace(match):
            nonlocal first
            text, first = (badges(path) if first else ""), False
            return text

        title = _BADGE_LINE.sub(replace, title)
        title = re.sub(r"\n{3,}", "\n\n", title)
    else:  # no badges yet: put them right below the title line
        head, _, rest = title.partition("\n")
        title = f"{head}\n\n{badges(path)}\n" + (f"\n{rest.lstrip(chr(10))}" if rest.strip() else "")
    cells[0]["source"] = _lines(title.rstrip("\n"))
    setup = next((c for c in cells[1:3] if c.get("cell_type") == "code" and "google.colab" in _source(c)), None)
    if setup is None:
        setup = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": []}
        if any("id" in c for c in cells):
            setup["id"] = "colab-setup"
        cells.insert(1, setup)
    elif cells.index(setup) != 1:
        cells.remove(setup)
        cells.insert(1, setup)
    setup["source"] = _lines(SETUP_CELL)
    return out


def notebooks(kinds=KINDS):
    """``(relative path, file)`` for every notebook of ``kinds``, in course order."""
    return [(f"{kind}/{p.name}", p) for kind in kinds for p in sorted((ROOT / kind).glob("*.ipynb"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; list notebooks that differ")
    args = parser.parse_args(argv)
    changed = []
    for rel, path in notebooks(EDITED):
        text = path.read_text(encoding="utf-8")
        new = dumps(with_header(read_notebook(path), rel))
        if new != text:
            changed.append(rel)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    stale = generate(ROOT / "solutions", ROOT / "exercises", check=args.check)
    changed += [str(Path(s.split(":")[0]).relative_to(ROOT)) for s in stale]
    print("\n".join(changed) if changed else "every notebook's launch header is up to date")
    if args.check:
        return 1 if changed else 0
    problems = [p for rel, path in notebooks() for p in header_problems(read_notebook(path), rel)]
    print("\n".join(problems))  # the generator and this script disagree: fix one of them
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
