"""The course as a student sees it: every lesson run through JupyterLab's UI in a real (headless) Chromium.

nbval checks that each lesson's cells run and its asserts hold; it cannot see what the browser shows.
This test starts JupyterLab on loopback (autosave off, settings and workspaces in a temporary folder),
drives Debian's ``/usr/bin/chromium`` with Playwright, and for every lesson, in a fresh kernel:

* runs all cells from the Run menu and waits for the last one (``LESSON_TIMEOUT_S`` per lesson);
* fails on any error or stderr output, on a widget that does not render ("Error displaying widget",
  "Loading widget..."), and on any output taller than ``MAX_SCREENS`` screens (a demo that printed its
  return value: a wall of numbers under the figure, issue 16);
* moves the first control of the lesson's first ``interactive`` demo and waits for its figure to be
  redrawn (a new image), then checks the outputs again;
* saves a screenshot to ``build/browser/NN_topic.png`` and the run times to ``build/browser/times.json``.

It also checks the REST API lists the course notebooks, that no notebook file changed on disk (nothing
was saved), and opens the rendered site (``tools/site.py``) on the index and one lesson page.
Every process it starts it stops by its own id. Without Playwright or Chromium it skips and says why;
``make test`` installs Chromium first where it can (root with apt).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
LESSONS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHOTS = ROOT / "build" / "browser"
LESSON_TIMEOUT_S = 300  # a lesson's budget is 180 s on a 2-core CPU; the browser adds its own load
REDRAW_TIMEOUT_S = 90
VIEWPORT = {"width": 1280, "height": 900}
MAX_SCREENS = 3
TOKEN = "kanedu-browser-test"

playwright_sync = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (dev extra)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`make test` does so when run as root with apt)",
                allow_module_level=True)



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(paths) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _write_settings(settings: Path) -> None:
    """JupyterLab user settings for the test: autosave off, no windowing (all cells in the DOM), no news."""
    files = {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }
    for name, value in files.items():
        path = settings / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


class Lab:
    """A JupyterLab server on loopback, started from this Python's environment and stopped by its pid."""

    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        _write_settings(tmp / "settings")
        env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "KANEDU_NO_WIDGETS")}
        env.update(JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
                   PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={ROOT}", "--LabApp.expose_app_in_browser=True",
                "--ServerApp.port_retries=0"]
        if os.geteuid() == 0:
            args.append("--allow-root")
        self.log = open(tmp / "lab.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}: {(tmp / 'lab.log').read_text()}")
            try:
                self.api("/api/status")
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("JupyterLab did not answer within 120 s")

    def api(self, path, method="GET"):
        request = urllib.request.Request(self.base + path, method=method,
                                         headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(request, timeout=20) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def stop_kernels(self):
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the kernels it started (same group)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    before = _digest(LESSONS)
    server = Lab(tmp_path_factory.mktemp("lab"))
    try:
        yield server
    finally:
        server.stop()
    assert _digest(LESSONS) == before, "a notebook file changed on disk: the browser test must never save"


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()  # Playwright stops the Chromium process it started


@pytest.fixture(scope="module")
def times():
    record = {}
    yield record
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "times.json").write_text(json.dumps(record, indent=1) + "\n")


# In the page: the current notebook's state, read through the app object JupyterLab exposes.
STATE_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return null;
  const code = panel.content.widgets.filter(c => c.model.type === 'code');
  const bad = [];
  code.forEach((c, i) => c.model.outputs.toJSON().forEach(o => {
    if (o.output_type === 'error') bad.push(`cell ${i + 1}: ${o.ename}: ${o.evalue}`);
    if (o.output_type === 'stream' && o.name === 'stderr') bad.push(`cell ${i + 1} stderr: ${o.text.slice(0, 500)}`);
  }));
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return {cells: code.length, done: code.filter(c => c.model.executionCount !== null).length,
          running: code.filter(c => c.node.querySelector('.jp-InputPrompt')?.textContent.includes('*')).length,
          kernel: kernel ? kernel.status : 'none', bad};
}"""

# In the page: what the student sees in the outputs (all cells are in the DOM: windowing is off).
DOM_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget.node;
  const outputs = [...panel.querySelectorAll('.jp-OutputArea-output')];
  const tallest = outputs.reduce((m, o) => Math.max(m, o.scrollHeight), 0);
  const text = panel.innerText;
  return {
    tallest,
    stderr: panel.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]').length,
    widgetErrors: (text.match(/Error displaying widget|Loading widget\\.\\.\\./g) || []).length,
    widgets: panel.querySelectorAll('.jp-OutputArea-output > .jupyter-widgets').length,
    interacts: panel.querySelectorAll('.widget-interact').length,
    images: panel.querySelectorAll('.jp-OutputArea-output img').length,
  };
}"""

FIRST_DEMO_IMAGE_JS = """() => {
  const box = window.jupyterapp.shell.currentWidget.node.querySelector('.widget-interact');
  const img = box && box.querySelector('img');
  return img ? img.src : null;
}"""


def _check_outputs(page, where):
    seen = page.evaluate(DOM_JS)
    limit = MAX_SCREENS * VIEWPORT["height"]
    assert seen["stderr"] == 0, f"{where}: {seen['stderr']} stderr/error output(s) shown"
    assert seen["widgetErrors"] == 0, f"{where}: a widget did not render ('Error displaying widget' or still loading)"
    assert seen["tallest"] <= limit, (f"{where}: an output is {seen['tallest']} px tall, more than {MAX_SCREENS} "
                                      f"screens ({limit} px): a wall of printed values?")
    return seen


def _move_first_control(page):
    """Change the first control of the first interactive demo by one step; returns a description."""
    box = page.locator(".widget-interact").first
    select = box.locator("select")
    if select.count() and not box.locator(".widget-slider").count():
        options = select.first.locator("option").all_text_contents()
        current = select.first.input_value()
        target = next(o for o in options if o != current)
        select.first.select_option(label=target)
        return f"dropdown {current} -> {target}"
    slider = box.locator(".widget-slider").first
    readout = slider.locator(".widget-readout")
    value = float(readout.inner_text())
    for new in (value + 1, value - 1):  # one unit up, or down where the slider ends (it clamps)
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(f"{new:g}")
        page.keyboard.press("Enter")
        page.wait_for_timeout(300)
        if float(readout.inner_text()) != value:
            break
    return f"slider {value:g} -> {float(readout.inner_text()):g}"


def _open_and_run_all(page, lab, rel, stop_on_bad=True):
    """Open notebook ``rel`` in JupyterLab (fresh workspace, so a fresh kernel), Run > Run All Cells, wait."""
    page.goto(f"{lab.base}/lab/tree/{rel}?reset&token={TOKEN}", wait_until="load", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"
                           " === 'idle'", timeout=120_000)
    autosave = page.evaluate("async () => (await window.jupyterapp.serviceManager.settings.fetch("
                             "'@jupyterlab/docmanager-extension:plugin')).settings.autosave")
    assert autosave is False, "JupyterLab's autosave must be off"
    opened = time.time()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    state = None
    while time.time() - opened < LESSON_TIMEOUT_S:
        state = page.evaluate(STATE_JS)
        if stop_on_bad:
            assert not state["bad"], f"{rel}: " + "\n".join(state["bad"])
        if state["done"] == state["cells"] and state["running"] == 0 and state["kernel"] == "idle":
            break
        time.sleep(1)
    else:
        pytest.fail(f"{rel}: not finished after {LESSON_TIMEOUT_S} s ({state})")
    page.wait_for_timeout(1500)  # let the last widgets and figures render
    return time.time() - opened, state


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_runs_in_jupyterlab_without_errors_and_its_demo_redraws(lab, browser, times, lesson):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    start, shot = time.time(), False
    try:
        ran, _ = _open_and_run_all(page, lab, f"notebooks/{lesson.name}")
        seen = _check_outputs(page, lesson.name)
        assert seen["widgets"] >= seen["interacts"], f"{lesson.name}: a widget view is missing"
        moved = None
        if seen["interacts"]:
            before = page.evaluate(FIRST_DEMO_IMAGE_JS)
            assert before, f"{lesson.name}: the first interactive demo shows no figure"
            page.locator(".widget-interact").first.scroll_into_view_if_needed()
            moved = _move_first_control(page)
            redrawn = f"() => {{ const s = ({FIRST_DEMO_IMAGE_JS})(); return s && s !== {json.dumps(before)}; }}"
            page.wait_for_function(redrawn, timeout=REDRAW_TIMEOUT_S * 1000)
            page.wait_for_timeout(500)
            assert not page.evaluate(STATE_JS)["bad"]
            _check_outputs(page, f"{lesson.name} after the {moved}")
            page.locator(".widget-interact").first.scroll_into_view_if_needed()
        else:
            last = page.locator(".jp-OutputArea-output img").last
            if last.count():
                last.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / f"{lesson.stem}.png"))
        shot = True
        times[lesson.stem] = {"run_all_s": round(ran, 1), "total_s": round(time.time() - start, 1),
                              "widgets": seen["widgets"], "images": seen["images"], "tallest_px": seen["tallest"],
                              "moved": moved}
    finally:
        if not shot:  # what the student would have seen where it failed
            page.screenshot(path=str(SHOTS / f"{lesson.stem}.failed.png"))
        page.close()
        lab.stop_kernels()


def test_the_rest_api_lists_the_course_notebooks(lab):
    for folder in ("notebooks", "exercises", "solutions"):
        listing = lab.api(f"/api/contents/{folder}")
        assert listing["type"] == "directory"
        names = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
        assert {p.name for p in (ROOT / folder).glob("*.ipynb")} <= names, folder


def test_the_checks_catch_a_planted_notebook_with_stderr_and_a_wall_of_numbers(lab, browser):
    """The detectors above are not vacuous: a notebook that writes to stderr and prints 400 lines trips both."""
    planted = ROOT / "build" / "browser-selftest" / "planted.ipynb"
    planted.parent.mkdir(parents=True, exist_ok=True)
    cells = ['import sys\nprint("a warning", file=sys.stderr)', 'print("\\n".join(str(i) for i in range(400)))']
    planted.write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": None, "metadata": {},
                                              "outputs": [], "source": c} for c in cells],
                                   "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                               "language": "python"}},
                                   "nbformat": 4, "nbformat_minor": 5}))
    page = browser.new_page(viewport=VIEWPORT)
    try:
        _, state = _open_and_run_all(page, lab, "build/browser-selftest/planted.ipynb", stop_on_bad=False)
        assert any("stderr: a warning" in b for b in state["bad"]), state
        with pytest.raises(AssertionError, match="stderr/error output"):
            _check_outputs(page, "planted")
        seen = page.evaluate(DOM_JS)
        assert seen["tallest"] > MAX_SCREENS * VIEWPORT["height"], seen
    finally:
        page.close()
        lab.stop_kernels()


def test_the_rendered_site_opens_on_its_index_and_a_lesson_page(browser, tmp_path):
    """``tools/site.py`` (``make site``) on the first lesson: the index lists every lesson in course order,
    and the lesson's page shows its figures and no error, from a file, without a server."""
    out, lesson = tmp_path / "site", LESSONS[0]
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "site.py"), "--only", lesson.stem, "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=LESSON_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto((out / "index.html").as_uri(), wait_until="domcontentloaded")
        numbers = page.locator("tr.lesson").evaluate_all("rows => rows.map(r => r.dataset.lesson)")
        assert numbers == [p.name[:2] for p in LESSONS], "the index lists the lessons in course order"
        page.screenshot(path=str(SHOTS / "site_index.png"))
        page.locator(f'a[href="{lesson.stem}.html"]').click()
        page.wait_for_load_state("domcontentloaded")
        assert page.url.endswith(f"{lesson.stem}.html")
        figures = page.locator('.jp-OutputArea-output img[src^="data:image/png"]').count()
        assert figures >= 1, f"{lesson.name}'s page shows no figure"
        assert page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0, "an error on the page"
        page.locator('.jp-OutputArea-output img[src^="data:image/png"]').first.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "site_lesson.png"))
    finally:
        page.close()
