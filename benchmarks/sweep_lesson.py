"""Run a lesson's code under other seeds, thread counts and CPU engines, to set its assertion thresholds.

A lesson asserts what it measures, with tolerances that must hold on any machine. This script runs the
lesson's own code cells (no copy of them) in a fresh process per configuration:

* ``--seeds 3,4,5`` replaces the lesson's line ``SEEDS = (...)``;
* ``--threads N`` makes ``kanedu.configure_cpu`` use N threads whatever the lesson asks for;
* ``--native 0`` runs with ``KANEDU_NATIVE=0`` (the torch kernel instead of the compiled loops);
* ``--set NAME=VALUE`` replaces another top-level assignment ``NAME = ...`` (e.g. a learning rate).

A failing ``assert`` is recorded and the run goes on, so one sweep shows every threshold's margin. At the
end the variable named by ``--collect`` (a dict of plain numbers the lesson builds for its asserts) is
printed as one JSON line, together with the failed asserts and the run time.

    python benchmarks/sweep_lesson.py notebooks/09_kan_recurrent_models.ipynb --collect summary \\
        --grid seeds=0,1,2/3,4,5/6,7,8 threads=1,2 native=1,0

``--grid`` runs every combination (seed sets separated by ``/``) and prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path


def _code_cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _override(src: str, name: str, value: str) -> tuple[str, int]:
    return re.subn(rf"^{re.escape(name)} = .*$", f"{name} = {value}", src, flags=re.M)


def run_one(notebook: Path, collect: str, seeds: str | None, threads: int | None, overrides: list[str]) -> dict:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import kanedu

    if threads is not None:
        configure = kanedu.configure_cpu
        kanedu.configure_cpu = lambda *a, **k: configure(**{**k, "threads": threads})
    cells = _code_cells(notebook)
    todo = ([("SEEDS", f"({seeds},)")] if seeds else []) + [tuple(o.split("=", 1)) for o in overrides]
    for name, value in todo:
        hits = 0
        for i, src in enumerate(cells):
            cells[i], n = _override(src, name, value)
            hits += n
        if hits != 1:
            raise SystemExit(f"{notebook}: expected one line '{name} = ...', found {hits}")
    ns: dict = {"__name__": "__main__"}
    failed = []
    start = time.perf_counter()
    for i, src in enumerate(cells):
        try:
            exec(compile(src, f"{notebook.name}[code cell {i}]", "exec"), ns)
        except AssertionError as err:
            failed.append(f"cell {i}: {err}")
        except Exception:  # noqa: BLE001 - report and stop: later cells depend on this one
            failed.append(f"cell {i}: ERROR {traceback.format_exc(limit=3)}")
            break
    import torch

    return {"seeds": seeds, "threads": torch.get_num_threads(), "native": kanedu.native.ENABLED,
            "seconds": round(time.perf_counter() - start, 1), "failed": failed, collect: ns.get(collect)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebook", type=Path)
    p.add_argument("--collect", default="summary", help="lesson variable to print (a dict of numbers)")
    p.add_argument("--seeds", help="comma-separated seeds for the lesson's SEEDS line")
    p.add_argument("--threads", type=int)
    p.add_argument("--native", choices=["0", "1"], help="KANEDU_NATIVE for this run")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--grid", nargs="*", metavar="KEY=V1,V2", help="seeds=a,b/c,d threads=1,2 native=1,0")
    args = p.parse_args()
    if args.grid is None:
        if args.native is not None and os.environ.get("KANEDU_NATIVE", "1") != args.native:
            env = dict(os.environ, KANEDU_NATIVE=args.native)  # must be set before kanedu is imported
            raise SystemExit(subprocess.call([sys.executable, *sys.argv], env=env))
        result = run_one(args.notebook, args.collect, args.seeds, args.threads, args.set)
        print("RESULT " + json.dumps(result, default=float), flush=True)
        return
    grid = dict(g.split("=", 1) for g in args.grid)
    seed_sets = grid.get("seeds", "0,1,2").split("/")
    threads = grid.get("threads", "1").split(",")
    natives = grid.get("native", "1").split(",")
    for seeds, th, nat in itertools.product(seed_sets, threads, natives):
        cmd = [sys.executable, __file__, str(args.notebook), "--collect", args.collect, "--seeds", seeds,
               "--threads", th, "--native", nat] + [f"--set={s}" for s in args.set]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, KANEDU_NATIVE=nat))
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        print(lines[-1][7:] if lines else json.dumps({"seeds": seeds, "threads": th, "native": nat,
                                                      "error": out.stderr[-2000:]}), flush=True)


if __name__ == "__main__":
    main()
