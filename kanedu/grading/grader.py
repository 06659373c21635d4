"""Batch grading: notebooks in, one CSV row (and optionally one Markdown feedback file) per submission.

Every submission runs in its own process (:mod:`kanedu.grading.runner`), in a fresh temporary working
directory holding only a copy of the notebook, with an address-space limit, a CPU-time backstop, a
wall-clock limit per cell and per part, and one for the whole submission. The grader

1. draws each part's inputs itself, with a seed chosen at grading time;
2. lets the notebook's cells run, then asks the runner to call the answers on those inputs (with the
   package's own implementations switched off) and send back the raw outputs;
3. judges the outputs against the reference answers in **this** process.

Nothing printed by the notebook is read as a result, and nothing the notebook redefines or patches
(``check``, ``torch.allclose``, files in its directory) reaches the judging. A cell that runs past its
limit, runs out of memory or kills its process (``os._exit``, a crash, ``exit()``) is recorded, and the
notebook is run again without it, so the other parts can still be graded (status ``timeout`` or
``crashed``). A notebook that cannot be read or attributed to an exercise gets status ``error``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import wire
from .parts import Exercise, PartResult, judge_outcomes
from .registry import EXERCISES, find_exercise

__all__ = ["Settings", "Submission", "Grade", "UsageError", "find_submissions", "grade_submission", "grade_all",
           "write_csv", "write_feedback", "review_flags"]

MAX_NOTEBOOK_BYTES = 50 * 2**20
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the directory that holds kanedu/


class UsageError(ValueError):
    """Bad command-line input (the CLI exits with status 2 and this message)."""


@dataclass(frozen=True)
class Settings:
    """Limits and options for grading; seconds and bytes."""

    cell_timeout: float = 60.0
    total_timeout: float = 600.0
    memory_bytes: int = 4 * 2**30
    seed: int | None = None  # None: a fresh seed per submission, drawn at grading time
    startup_timeout: float = 120.0  # Python, torch and kanedu must import within this (counts in the total)
    max_attempts: int = 3  # runs of one submission: the first, then without the cells that broke it


@dataclass(frozen=True)
class Submission:
    path: Path
    id: str  # how the CSV names it: the path as found under the PATH argument
    rel: str = ""  # the path below the PATH argument (its name for a file): names the feedback file


@dataclass
class Grade:
    submission: Submission
    exercise: Exercise | None
    results: dict[str, PartResult] = field(default_factory=dict)
    status: str = "ok"
    incidents: list[str] = field(default_factory=list)  # why the status is not ok
    notes: list[str] = field(default_factory=list)  # errors raised by cells (the notebook carried on)
    flags: list[str] = field(default_factory=list)  # review flags (they never change a score)
    seed: int | None = None  # of the hidden inputs: --seed SEED grades them again on the same inputs
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(r.points for r in self.results.values())

    @property
    def max_points(self) -> int | None:
        return self.exercise.max_points if self.exercise else None

    @property
    def reason(self) -> str:
        """The CSV's reason: what went wrong, the first cell error, and any review flags."""
        parts = list(self.incidents)
        if self.notes:
            more = len(self.notes) - 1
            parts.append(self.notes[0] + (f" (and {more} more cell error{'s' if more > 1 else ''})" if more else ""))
        if self.flags:
            parts.append("review: " + "; ".join(self.flags))
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# finding submissions and telling which exercise each is
# --------------------------------------------------------------------------------------------------


def find_submissions(paths) -> list[Submission]:
    """Notebooks named by ``paths``: files ``*.ipynb`` as given, folders searched recursively (hidden
    folders and ``.ipynb_checkpoints`` skipped). Raises :class:`UsageError` for a missing path, a file
    that is not a notebook, or when nothing is found."""
    if not paths:
        raise UsageError("give at least one notebook or folder of notebooks to grade")
    found, seen = [], set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"{raw}: no such file or folder")
        if path.is_file():
            if path.suffix != ".ipynb":
                raise UsageError(f"{raw}: not a notebook (expected a .ipynb file or a folder)")
            candidates = [(path, str(raw), path.name)]
        else:
            candidates = []
            for nb in sorted(path.rglob("*.ipynb")):
                rel = nb.relative_to(path)
                if any(p.startswith(".") for p in rel.parts[:-1]):  # .ipynb_checkpoints and hidden folders
                    continue
                candidates.append((nb, os.path.join(str(raw), str(rel)), str(rel)))
        for nb, name, rel in candidates:
            key = nb.resolve()
            if key not in seen:
                seen.add(key)
                found.append(Submission(nb, os.path.normpath(name), rel))
    if not found:
        raise UsageError(f"no notebooks (*.ipynb) found in {', '.join(str(p) for p in paths)}")
    return found


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src) if isinstance(src, str) else ""


def read_submission(path: Path) -> tuple[dict, list[tuple[int, str]]]:
    """The notebook and its code cells as (cell index, source); ``ValueError`` with a reason if unreadable."""
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"the file is {size / 2**20:.0f} MiB, more than {MAX_NOTEBOOK_BYTES // 2**20} MiB")
    try:
        nb = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a notebook: the file is not valid JSON ({exc})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        version = nb.get("nbformat") if isinstance(nb, dict) else None
        raise ValueError(f"not a version-4 notebook (nbformat {version}); open and save it in Jupyter")
    cells = [(i, _source(c)) for i, c in enumerate(nb["cells"])
             if isinstance(c, dict) and c.get("cell_type") == "code"]
    return nb, cells


def identify(nb: dict, path: Path, cells) -> Exercise | None:
    """The exercise of a submission: its ``kanedu.exercise`` metadata, else its file name (``02_bsplines``,
    or any name starting ``02_``), else the exercise whose part names its ``check`` calls use most."""
    meta = nb.get("metadata", {})
    tag = meta.get("kanedu", {}).get("exercise") if isinstance(meta, dict) and isinstance(meta.get("kanedu"), dict) \
        else None
    if isinstance(tag, str) and find_exercise(tag):
        return find_exercise(tag)
    by_name = find_exercise(path.stem)
    if by_name:
        return by_name
    prefix = re.match(r"(\d\d)_", path.name)
    if prefix:
        matches = [e for e in EXERCISES.values() if e.notebook.startswith(prefix.group(1) + "_")]
        if len(matches) == 1:
            return matches[0]
    counts = {e.id: sum(src.count(f'"{e.id}.') + src.count(f"'{e.id}.") for _, src in cells)
              for e in EXERCISES.values()}
    best = max(counts, key=counts.get)
    return EXERCISES[best] if counts[best] else None


_REVIEW = [  # code that submissions have no reason to contain, and that tampering with a grader needs
    (r"\.__code__\b|\bCodeType\b|\bFunctionType\b", "function code objects"),
    (r"\bsetprofile\b|\bsettrace\b", "profiling/tracing hooks"),
    (r"\b_getframe\b|\bcurrentframe\b|\bf_locals\b|\bf_globals\b|\bf_back\b", "stack frames"),
    (r"\bctypes\b", "ctypes"),
    (r"\bgc\.get_(?:objects|referrers|referents)\b", "the garbage collector's object lists"),
    (r"/proc/self|\bos\.read\b|\bos\.fdopen\b|\bsys\.stdin\b|\bos\.dup2?\b", "the process's file descriptors"),
    (r"\breload\s*\(|\bspec_from_file_location\b|\brunpy\b|\bsys\.modules\s*(?:\[|\.(?:pop|update|clear))",
     "module reloading"),
    (r"kanedu\.grading\.(?:{0})\b|from\s+kanedu\.grading\s+import\s+[^\n]*\b(?:{0})\b".format(
        "answers|guard|parts|runner|wire|registry|grader|generate|checks|ex\\d\\d"), "the grader's internals"),
]


def review_flags(cells) -> list[str]:
    """Lines like "cell 7 uses stack frames": code an instructor may want to look at. Flags never
    change a score; they point at what a forgery would need."""
    flags = []
    for index, source in cells:
        found = [what for pattern, what in _REVIEW if re.search(pattern, source)]
        if found:
            flags.append(f"cell {index + 1} uses {', '.join(found)}")
    return flags


# --------------------------------------------------------------------------------------------------
# running one submission
# --------------------------------------------------------------------------------------------------


class _Run:
    """One runner process: its pipes, the tail of its output, and its protocol messages."""

    def __init__(self, cells_file: Path, skip, workdir: Path, settings: Settings, cpus, cpu_seconds: int):
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "JUPYTER_", "IPYTHON"))}
        env.update({
            "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]),
            "MPLBACKEND": "Agg", "IPYTHONDIR": str(workdir / ".ipython"), "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(len(cpus) if cpus else 1),
        })
        cmd = [sys.executable, "-m", "kanedu.grading.runner", "--fd", str(write_fd), "--cells", str(cells_file),
               "--skip", ",".join(str(i) for i in sorted(skip)), "--memory", str(settings.memory_bytes),
               "--cpu-seconds", str(cpu_seconds)]
        if cpus:
            cmd += ["--cpus", ",".join(str(c) for c in cpus)]
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         cwd=workdir, env=env, pass_fds=(write_fd,), start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.messages: queue.Queue = queue.Queue()
        self.tail: deque[str] = deque(maxlen=200)
        self._threads = [threading.Thread(target=self._read_messages, args=(read_fd,), daemon=True),
                         threading.Thread(target=self._read_output, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_messages(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                if len(line) > 64 * 2**20:
                    self.messages.put({"event": "bad", "why": "a message over 64 MiB"})
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    message = {"event": "bad", "why": "a message that is not JSON"}
                self.messages.put(message if isinstance(message, dict) else {"event": "bad", "why": "not a dict"})
        self.messages.put({"event": "eof"})

    def _read_output(self) -> None:
        for raw in iter(lambda: self.proc.stdout.readline(4096), b""):
            self.tail.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def next_message(self, deadline: float) -> dict | None:
        """The next message, or None once ``deadline`` (time.monotonic) has passed."""
        try:
            return self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def send(self, message: dict) -> bool:
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def exit_status(self, wait: float = 2.0) -> str:
        try:
            code = self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole session: also what the notebook started
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for t in self._threads:
            t.join(timeout=2)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _cell_label(cells: dict[int, str], index: int) -> str:
    first = next((line.strip() for line in cells.get(index, "").splitlines() if line.strip()), "")
    first = first if len(first) <= 50 else first[:47] + "..."
    return f"cell {index + 1}" + (f" ({first})" if first else "")


def _describe_crash(run: _Run) -> str:
    status = run.exit_status()
    last = [line for line in run.tail if line.strip() and not re.fullmatch(r"Out\[\d+\]:\s*", line)][-1:]
    return status + (f"; last output: {last[0][:120]}" if last else "")


def grade_submission(sub: Submission, settings: Settings = Settings(), cpus=None) -> Grade:
    """Grade one notebook (see the module docstring). Never raises for anything the notebook does."""
    start = time.monotonic()
    try:
        nb, cells = read_submission(sub.path)
    except (OSError, ValueError) as exc:
        return Grade(sub, None, status="error", incidents=[str(exc)], seconds=time.monotonic() - start)
    exercise = identify(nb, sub.path, cells)
    if exercise is None:
        return Grade(sub, None, status="error", seconds=time.monotonic() - start,
                     incidents=["cannot tell which exercise this is (no kanedu metadata, file name or check calls)"])
    seed = settings.seed if settings.seed is not None else secrets.randbits(63)
    grade = Grade(sub, exercise, flags=review_flags(cells), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    cases = {p.name: p.cases(gen, True) for p in exercise.parts}
    encoded = {name: [wire.encode(c) for c in cs] for name, cs in cases.items()}
    sources = dict(cells)
    deadline = start + settings.total_timeout
    skip: set[int] = set()
    cell_errors: dict[int, dict] = {}
    incidents: list[tuple[str, str]] = []  # (status, reason)
    workroot = Path(tempfile.mkdtemp(prefix="kanedu-grade-"))
    try:
        for attempt in range(settings.max_attempts):
            pending = [p for p in exercise.parts if p.name not in grade.results]
            if not pending or time.monotonic() >= deadline:
                break
            outcome = _attempt(sub, cells, sources, skip, exercise, pending, cases, encoded, grade, cell_errors,
                               settings, deadline, workroot / f"run{attempt}", cpus)
            if outcome is None:
                break
            status, reason, bad_cell, retry = outcome
            incidents.append((status, reason))
            if not retry:
                break
            if bad_cell is not None:
                skip.add(bad_cell)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    for part in exercise.parts:
        if part.name not in grade.results:
            why = "the notebook's run ended before this part could be checked" if incidents else "not checked"
            grade.results[part.name] = PartResult(part, 0, f"not graded: {why}")
    if incidents:
        grade.status = "timeout" if any(s == "timeout" for s, _ in incidents) else "crashed"
        grade.incidents += [r for _, r in incidents]
    grade.notes = [f"{_cell_label(sources, i)} raised {e['type']}: {e['message'][:100]}"
                   for i, e in sorted(cell_errors.items()) if i not in skip]
    grade.seconds = time.monotonic() - start
    return grade


def _attempt(sub, cells, sources, skip, exercise, pending, cases, encoded, grade, cell_errors, settings, deadline,
             workdir: Path, cpus):
    """One run of the runner. Judges the parts it gets to and returns None when it ran to the end, else
    (status, reason, the cell to skip next time or None, whether another run can help)."""
    workdir.mkdir(parents=True)
    cell_errors.clear()  # the notes describe the last run
    cells_file = workdir / ".kanedu-cells.json"
    cells_file.write_text(json.dumps(cells), encoding="utf-8")
    shutil.copyfile(sub.path, workdir / sub.path.name)
    cpu_seconds = int(math.ceil((deadline - time.monotonic()) * max(1, len(cpus or [1])))) + 30
    run = _Run(cells_file, skip, workdir, settings, cpus, cpu_seconds)
    total_limit = f"the notebook ran past the total limit of {settings.total_timeout:g} s"
    try:
        # startup: Python, torch and kanedu
        message = run.next_message(min(deadline, time.monotonic() + settings.startup_timeout))
        if message is None:
            return ("timeout", f"the notebook's process did not start within {settings.startup_timeout:.0f} s",
                    None, False)
        if message.get("event") != "ready":
            return "crashed", f"the notebook's process failed to start ({_describe_crash(run)})", None, False
        current = None  # the cell that is running
        cell_deadline = deadline
        while True:
            message = run.next_message(min(deadline, cell_deadline))
            if message is None:
                if current is not None and time.monotonic() >= cell_deadline and cell_deadline < deadline:
                    return ("timeout", f"{_cell_label(sources, current)} ran past the {settings.cell_timeout:g} s "
                                       "cell limit and was skipped", current, True)
                return "timeout", total_limit, None, False
            event, cell = message.get("event"), message.get("cell")
            if event == "start" and isinstance(cell, int):
                current = cell
                cell_deadline = time.monotonic() + settings.cell_timeout
            elif event == "end":
                error = message.get("error")
                if isinstance(error, dict) and isinstance(cell, int):
                    cell_errors[cell] = {"type": str(error.get("type"))[:60],
                                         "message": str(error.get("message"))[:300]}
                    if error.get("memory"):
                        return ("crashed", f"{_cell_label(sources, cell)} ran out of memory (limit "
                                           f"{settings.memory_bytes / 2**20:.0f} MiB) and was skipped", cell, True)
                current, cell_deadline = None, deadline
            elif event == "exit" and isinstance(cell, int):
                return "crashed", f"{_cell_label(sources, cell)} exited the kernel (exit()) and was skipped", cell, True
            elif event == "cells_done":
                break
            elif event in ("eof", "bad"):
                where = _cell_label(sources, current) if current is not None else "between cells"
                if event == "bad":
                    return "crashed", f"{where}: the notebook wrote {message.get('why')} to the grader's pipe", \
                        current, True
                return "crashed", f"{where} ended the notebook's process ({_describe_crash(run)}) and was skipped", \
                    current, True
        for part in pending:
            if time.monotonic() >= deadline:
                return "timeout", total_limit, None, False
            if not run.send({"part": part.name, "cases": encoded[part.name]}):
                grade.results[part.name] = PartResult(part, 0, "not graded: the notebook's process had ended")
                return ("crashed", f"the notebook's process ended before {part.name} ({_describe_crash(run)})",
                        None, True)
            message = run.next_message(min(deadline, time.monotonic() + settings.cell_timeout))
            if message is None:
                if time.monotonic() >= deadline:
                    return "timeout", total_limit, None, False
                grade.results[part.name] = PartResult(
                    part, 0, f"your {part.answer} ran past the {settings.cell_timeout:g} s limit on the hidden inputs")
                return "timeout", f"{part.name}: the answer ran past the {settings.cell_timeout:g} s limit", None, True
            if message.get("event") != "reply" or message.get("part") != part.name:
                if message.get("event") == "eof":
                    grade.results[part.name] = PartResult(part, 0, "your answer ended the notebook's process "
                                                                   f"({_describe_crash(run)})")
                    return "crashed", f"{part.name}: the answer ended the notebook's process", None, True
                grade.results[part.name] = PartResult(part, 0, "not graded: unexpected message from the notebook")
                return "crashed", f"{part.name}: the grader's pipe got an unexpected message", None, True
            if message.get("missing"):
                grade.results[part.name] = PartResult(part, 0, f"the notebook does not define {part.answer}")
                continue
            grade.results[part.name] = judge_outcomes(part, cases[part.name], message.get("reply"))
        run.send({"quit": True})
        return None
    finally:
        run.kill()


# --------------------------------------------------------------------------------------------------
# many submissions, the CSV and the feedback files
# --------------------------------------------------------------------------------------------------


def _cpu_slots(jobs: int) -> list[list[int]]:
    """Disjoint CPU sets for parallel jobs (every job gets at least one CPU; with more jobs than CPUs
    they share), so that a notebook's threads do not fight another job's."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return [[] for _ in range(jobs)]
    if jobs >= len(cpus):
        return [[cpus[j % len(cpus)]] for j in range(jobs)]
    size = len(cpus) // jobs
    return [cpus[j * size:(j + 1) * size] for j in range(jobs)]


def grade_all(submissions, settings: Settings = Settings(), jobs: int = 1, progress: bool = True) -> list[Grade]:
    """Grade ``submissions`` with ``jobs`` in parallel; the grades come back in the submissions' order."""
    from tqdm import tqdm

    torch.set_num_threads(1)  # the judges' work is tiny; the CPUs belong to the notebooks
    slots: queue.Queue = queue.Queue()
    for cpus in _cpu_slots(jobs):
        slots.put(cpus)

    def one(sub):
        cpus = slots.get()
        try:
            return grade_submission(sub, settings, cpus)
        except Exception as exc:  # a bug of the grader must not lose the batch
            return Grade(sub, None, status="error", incidents=[f"grader error: {type(exc).__name__}: {exc}"])
        finally:
            slots.put(cpus)

    grades: dict[Submission, Grade] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(submissions), desc="grading", unit="notebook", disable=not progress) as bar:
        futures = {pool.submit(one, sub): sub for sub in submissions}
        for future in as_completed(futures):
            grades[futures[future]] = future.result()
            bar.update(1)
    return [grades[sub] for sub in submissions]


def _part_columns(grades) -> list[str]:
    used = {g.exercise.id for g in grades if g.exercise}
    return [p.name for e in EXERCISES.values() if e.id in used for p in e.parts]


def csv_text(grades) -> str:
    """The CSV: submission, exercise, one column per part, total, max, status, reason."""
    columns = _part_columns(grades)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["submission", "exercise", *columns, "total", "max", "status", "reason"])
    for g in grades:
        points = [g.results[c].points if c in g.results else "" for c in columns]
        writer.writerow([g.submission.id, g.exercise.id if g.exercise else "", *points, g.total,
                         g.max_points if g.max_points is not None else "", g.status, g.reason])
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_csv(grades, out) -> None:
    """Write the CSV to ``out`` atomically (a temporary file in the same folder, then a rename)."""
    _write_atomic(Path(out), csv_text(grades))


def _md(text: str) -> str:
    """Plain text for a Markdown paragraph: no markup from * _ ` < [ in messages and hints."""
    return re.sub(r"([\\*_`<\[\]|])", r"\\\1", " ".join(str(text).split()))


def feedback_markdown(grade: Grade) -> str:
    """The feedback for one submission, to return to the student."""
    lines = [f"# Feedback: {grade.submission.id}", ""]
    if grade.exercise is None:
        lines += [f"This notebook could not be graded: {_md(grade.reason)}.", ""]
        return "\n".join(lines)
    e = grade.exercise
    lines += [f"**Exercise {e.id[2:]}: {e.title}**: {grade.total} of {e.max_points} points "
              f"(status: {grade.status}).", ""]
    lines += ["| part | points | result |", "|---|---|---|"]
    for part in e.parts:
        r = grade.results[part.name]
        mark = "passed" if r.passed else "failed"
        lines.append(f"| {part.title} (`{part.name}`) | {r.points} / {part.points} | {mark} |")
    lines.append("")
    for part in e.parts:
        r = grade.results[part.name]
        lines += [f"## {part.title} ({r.points} / {part.points})", "", _md(r.message) + ".", ""]
        if not r.passed and not r.message.startswith("not graded"):
            lines += [f"*Hint:* {_md(part.hint)}", ""]
    if grade.status != "ok" or grade.notes:
        lines += ["## Notes", ""]
        lines += [f"- {_md(r)}" for r in grade.incidents]
        lines += [f"- {_md(n)}" for n in grade.notes]
        lines.append("")
    lines.append("The grader ran your notebook from top to bottom, then checked each part on new inputs "
                 f"(drawn with seed {grade.seed}).")
    return "\n".join(lines) + "\n"


def feedback_name(sub: Submission) -> str:
    """``alice/02_bsplines.ipynb`` (below the PATH argument) -> ``alice__02_bsplines.md``."""
    rel = sub.rel or sub.path.name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace(os.sep, "__").replace("/", "__"))
    return (name[:-6] if name.endswith(".ipynb") else name) + ".md"


def write_feedback(grades, folder) -> list[Path]:
    """One Markdown file per submission in ``folder`` (created if missing); returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths, used = [], set()
    for g in grades:
        name = feedback_name(g.submission)
        stem, n = name[:-3], 2
        while name in used:
            name, n = f"{stem}-{n}.md", n + 1
        used.add(name)
        path = folder / name
        _write_atomic(path, feedback_markdown(g))
        paths.append(path)
    return paths
