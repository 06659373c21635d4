"""The submission's side of batch grading: ``python -m kanedu.grading.runner`` (started by the grader).

One process per submission. It applies its resource limits, imports the course package, then runs the
notebook's code cells one by one in an IPython shell (magics, ``display`` and ``get_ipython()`` behave as
in Jupyter; ``input()`` gets end-of-file), reporting the start and end of every cell on a private pipe so
that the grader can stop a cell that runs too long. After the last cell it answers the grader's
requests: "run part P on these inputs", which :func:`kanedu.grading.parts.run_cases` does with the
package switched off, and it sends back the raw outputs. It never sees the reference answers' values
and never decides a score.

Protocol: JSON lines. Grader -> runner on stdin: ``{"part": name, "cases": [...]}`` or ``{"quit": true}``.
Runner -> grader on ``--fd``: ``{"event": "ready" | "start" | "end" | "skip" | "exit" | "cells_done" |
"reply", ...}``. The notebook's own output goes to stdout/stderr, which the grader keeps only as a tail
for crash reports and never parses.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    """Address-space and CPU-time limits (a backstop: the grader also stops the process by wall clock)."""
    for which, value in ((resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
                         (resource.RLIMIT_CORE, 0)):
        if value is None:
            continue
        soft, hard = resource.getrlimit(which)
        new = value if hard == resource.RLIM_INFINITY else min(value, hard)
        try:
            resource.setrlimit(which, (new, new if which != resource.RLIMIT_CPU else hard))
        except (ValueError, OSError) as exc:  # e.g. macOS refuses address-space limits: the wall clock still holds
            print(f"kanedu.grading.runner: could not set a resource limit ({exc})", file=sys.stderr)


def _memory_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)


def _error(exc: BaseException | None) -> dict | None:
    if exc is None:
        return None
    message = " ".join(str(exc).split())
    return {"type": type(exc).__name__, "message": message[:300], "memory": _memory_error(exc)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kanedu.grading.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="pipe for messages to the grader")
    parser.add_argument("--cells", required=True, help="JSON file with the code cells")
    parser.add_argument("--skip", default="", help="comma-separated cell indices not to run")
    parser.add_argument("--memory", type=int, default=None, help="address-space limit in bytes")
    parser.add_argument("--cpu-seconds", type=int, default=None, help="CPU-time limit in seconds")
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to run on")
    args = parser.parse_args(argv)

    _limit(args.memory, args.cpu_seconds)
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    # Private channels: the grader's requests come on a copy of stdin; the notebook's stdin is empty.
    requests = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdin = open(os.devnull)  # noqa: SIM115 (lives as long as the process)
    out_fd, write = args.fd, os.write

    def send(message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[write(out_fd, data):]

    with open(args.cells, encoding="utf-8") as f:
        cells = json.load(f)
    skip = {int(i) for i in args.skip.split(",") if i}

    import torch  # noqa: F401  (before the notebook: the checks' modules must be the package's own)
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    import kanedu  # noqa: F401
    from kanedu.grading.parts import run_cases
    from kanedu.grading.registry import PARTS
    from kanedu.grading.wire import decode

    class Shell(InteractiveShell):
        def ask_exit(self):  # exit() / quit() in a cell: like a kernel that shuts down
            self.exit_now = True

    config = Config()
    config.HistoryManager.enabled = False  # no history database on disk
    config.InteractiveShell.colors = "nocolor"
    shell = Shell.instance(config=config)
    send({"event": "ready"})

    for index, source in cells:
        if index in skip:
            send({"event": "skip", "cell": index})
            continue
        send({"event": "start", "cell": index})
        result = shell.run_cell(source, store_history=True)
        sys.stdout.flush()
        sys.stderr.flush()
        error = _error(result.error_before_exec or result.error_in_exec)
        send({"event": "end", "cell": index, "error": error})
        if shell.exit_now:
            send({"event": "exit", "cell": index})
            os._exit(0)
    send({"event": "cells_done"})

    for line in requests:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if request.get("quit"):
            break
        name = request.get("part")
        part = PARTS.get(name)
        if part is None:
            send({"event": "reply", "part": name, "reply": None})
            continue
        answer = shell.user_ns.get(part.answer)
        if answer is None:
            send({"event": "reply", "part": name, "missing": True})
            continue
        reply = run_cases(part, answer, [decode(c) for c in request.get("cases", [])], reraise=())
        sys.stdout.flush()
        send({"event": "reply", "part": name, "reply": reply})
    sys.stdout.flush()
    os._exit(0)  # no atexit handlers or finalizers of the notebook's objects


if __name__ == "__main__":
    main()
