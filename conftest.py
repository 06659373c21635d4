"""Project-wide pytest hooks: report each notebook's run time and hold lessons to their budget.

A lesson must run top to bottom in at most 3 minutes on a 2-core CPU. CI machines are shared and
noisy, so the run fails only past 1.5x that budget; the summary lists every notebook's time.
"""

import collections
import json
import time
from pathlib import Path

import pytest

LESSON_BUDGET_S = 180.0
FAIL_FACTOR = 1.5

_durations: collections.Counter = collections.Counter()
_started = time.time()
BROWSER_TIMES = Path(__file__).parent / "build" / "browser" / "times.json"  # written by tests/test_browser.py


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _durations[path] += report.duration


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if BROWSER_TIMES.exists() and BROWSER_TIMES.stat().st_mtime >= _started:
        terminalreporter.section("lessons in JupyterLab + Chromium (tests/test_browser.py)")
        for stem, t in json.loads(BROWSER_TIMES.read_text()).items():
            terminalreporter.write_line(f"{t['run_all_s']:7.1f} s run all, {t['total_s']:6.1f} s in all  {stem}"
                                        f"  (tallest output {t['tallest_px']} px, moved: {t['moved']})")
    if not _durations:
        return
    terminalreporter.section("notebook run times (budget 180 s each)")
    for path, seconds in sorted(_durations.items()):
        flag = "  OVER BUDGET" if seconds > LESSON_BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{flag}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    over = {p: s for p, s in _durations.items() if s > FAIL_FACTOR * LESSON_BUDGET_S}
    if over and session.exitstatus == 0:
        session.exitstatus = 1
        for p, s in over.items():
            print(f"\n{p} took {s:.0f} s, more than {FAIL_FACTOR} x the {LESSON_BUDGET_S:.0f} s lesson budget")
