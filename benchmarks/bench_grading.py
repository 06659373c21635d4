"""What grading costs on top of running a notebook: python benchmarks/bench_grading.py [NOTEBOOK...]

For each solution notebook (default: all of solutions/) it times

* **execute**: running the notebook top to bottom in a fresh Jupyter kernel with nbclient, as a student
  (or nbval) does, kernel start included;
* **grade**: ``python -m kanedu.grading grade NOTEBOOK --out ...`` from a fresh process: the grader's own
  start-up, the runner process, the notebook's cells, the hidden checks and the CSV;

and prints the difference. The course's target: grading adds at most 10 s to executing a notebook.
Runs one notebook at a time; each is measured ``--repeat`` times and the median is shown.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 10.0


def execute_seconds(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(path.parent)}})
    client.execute(stderr=subprocess.DEVNULL)  # the kernel's own log lines would interleave with the table
    return time.perf_counter() - start


def grade_seconds(path: Path) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "grades.csv"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kanedu.grading", "grade", str(path), "--out", str(out), "--no-progress"],
                       check=True, capture_output=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        row = out.read_text(encoding="utf-8").splitlines()[1].split(",")
    return seconds, f"{row[-4]}/{row[-3]} {row[-2]}"  # total/max status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=sorted((ROOT / "solutions").glob("*.ipynb")))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'notebook':<42} {'execute s':>10} {'grade s':>9} {'overhead s':>11}  score")
    worst = 0.0
    for path in args.notebooks:
        executes, grades, score = [], [], ""
        for _ in range(args.repeat):
            executes.append(execute_seconds(path))
            seconds, score = grade_seconds(path)
            grades.append(seconds)
        ex, gr = statistics.median(executes), statistics.median(grades)
        worst = max(worst, gr - ex)
        print(f"{path.name:<42} {ex:>10.1f} {gr:>9.1f} {gr - ex:>+11.1f}  {score}")
    verdict = "within" if worst <= TARGET_S else "OVER"
    print(f"largest overhead {worst:+.1f} s: {verdict} the {TARGET_S:.0f} s target")


if __name__ == "__main__":
    main()
