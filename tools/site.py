"""The rendered course: every lesson executed and written as HTML, with its outputs and figures.

``make site`` (or ``python tools/site.py``) runs each lesson of ``notebooks/`` top to bottom in a fresh
kernel, the way a student does, and writes ``build/site/NN_topic.html`` (figures embedded, so a page
opens anywhere without a server) and ``build/site/index.html``, the lessons in course order with their
estimated time and how long the build took to run them. The notebooks themselves are not touched.

A lesson that raises is still written (the error is visible on its page) and marked on the index; the
command then exits 1. ``--only 00_welcome`` builds some lessons (the index still lists them all);
``--out DIR`` writes elsewhere.
"""

from __future__ import annotations

import argparse
import copy
import html
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
CELL_TIMEOUT_S = 600


def lessons() -> list[Path]:
    """The lesson notebooks in course order (their ``NN_`` prefix)."""
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def title_of(nb) -> str:
    """``"Lesson 02: B-splines"`` from the notebook's first line."""
    first = "".join(nb.cells[0].source).splitlines()[0] if nb.cells else ""
    return first.lstrip("# ").strip()


def estimated_time(nb) -> str:
    """The lesson's own "Estimated time" (e.g. "45 minutes"), or "" where it states none."""
    text = "\n".join("".join(c.source) for c in nb.cells[:3] if c.cell_type == "markdown")
    match = re.search(r"\*\*Estimated time\.\*\*\s*(?:About\s+)?(\d+(?:-\d+)?\s*minutes?)", text)
    return match.group(1) if match else ""


def execute(path: Path) -> tuple[nbformat.NotebookNode, float, list[str]]:
    """Run ``path`` in a fresh kernel (inline figures, widgets' state kept); returns it, seconds, errors."""
    nb = nbformat.read(path, as_version=4)
    env_backup = os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend embeds the figures
    try:
        client = NotebookClient(copy.deepcopy(nb), timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=True,
                                store_widget_state=True, resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        ran = client.execute()
        seconds = time.perf_counter() - start
    finally:
        if env_backup is not None:
            os.environ["MPLBACKEND"] = env_backup
    errors = [f"cell {i + 1}: {o.ename}: {o.evalue}" for i, c in enumerate(ran.cells) if c.cell_type == "code"
              for o in c.get("outputs", []) if o.output_type == "error"]
    return ran, seconds, errors


def index_page(rows: list[dict]) -> str:
    """The index: one row per lesson, in course order."""
    body = []
    for row in rows:
        link = f'<a href="{row["page"]}">{html.escape(row["title"])}</a>' if row["built"] else html.escape(row["title"])
        status = ("failed in this build: " + html.escape("; ".join(row["errors"]))) if row["errors"] else (
            f'ran in {row["seconds"]:.0f} s' if row["built"] else "not built")
        body.append(f'<tr class="lesson" data-lesson="{row["number"]}"><td>{row["number"]}</td><td>{link}</td>'
                    f'<td>{html.escape(row["time"])}</td><td>{status}</td></tr>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kanedu: a course on Kolmogorov-Arnold Networks</title>
<style>body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 1.4 }}
table {{ border-collapse: collapse }} td, th {{ padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: left }}
</style></head><body>
<h1>kanedu: a course on Kolmogorov-Arnold Networks</h1>
<p>Every lesson below was run top to bottom in a fresh kernel when this site was built; each page shows
the outputs and figures a student sees. To run and change them, open the notebooks in JupyterLab
(<code>make lab</code>), on Colab or on Binder (see the README).</p>
<table><thead><tr><th>#</th><th>lesson</th><th>time to study</th><th>this build</th></tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
</body></html>
"""


def build(out: Path, only: list[str] | None = None) -> list[dict]:
    """Write the pages of ``only`` (stems; all lessons when None) and the index to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    rows = []
    for path in lessons():
        nb = nbformat.read(path, as_version=4)
        row = {"number": path.name[:2], "title": title_of(nb), "time": estimated_time(nb), "page": f"{path.stem}.html",
               "built": False, "seconds": 0.0, "errors": []}
        if only is None or path.stem in only:
            print(f"running {path.relative_to(ROOT)} ...", flush=True)
            ran, row["seconds"], row["errors"] = execute(path)
            page, _ = exporter.from_notebook_node(ran, resources={"metadata": {"name": row["title"]}})
            (out / row["page"]).write_text(page, encoding="utf-8")
            row["built"] = True
            print(f"  {row['seconds']:.0f} s" + (f", ERRORS: {row['errors']}" if row["errors"] else ""), flush=True)
        rows.append(row)
    (out / "index.html").write_text(index_page(rows), encoding="utf-8")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "site", help="output folder (build/site)")
    parser.add_argument("--only", nargs="+", metavar="STEM", help="build only these lessons, e.g. 00_welcome")
    args = parser.parse_args(argv)
    known = {p.stem for p in lessons()}
    if args.only and not set(args.only) <= known:
        parser.error(f"--only: unknown lessons {sorted(set(args.only) - known)}; known: {sorted(known)}")
    rows = build(args.out, args.only)
    failed = [r["title"] for r in rows if r["errors"]]
    print(f"wrote {args.out / 'index.html'}" + (f"; lessons with errors: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
