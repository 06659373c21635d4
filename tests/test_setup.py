"""The README's two commands: `make lab` serves the course; `.ci/run` calls `make test`."""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(c.split("#")[0].strip() for c in commands if c.strip().startswith("make test"))
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip()]
    assert ci_lines[-1] == test_cmd


def test_pyproject_keeps_lower_bounds_and_constraints_pin_torch():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=' in pyproject and "torch==" not in pyproject
    constraints = (ROOT / "requirements" / "constraints.txt").read_text()
    assert "\ntorch==2.13.0\n" in constraints


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "jupyter").exists(), reason="needs the make-built .venv")
def test_make_lab_serves_the_course_notebooks():
    port, token = _free_port(), "kanedu-test-token"
    args = f"--no-browser --port={port} --ServerApp.token={token} --ServerApp.ip=127.0.0.1"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(Path("/tmp") / f"kanedu-jupyter-{port}"))
    proc = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}"
        deadline, listing = time.time() + 90, None
        while time.time() < deadline and listing is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    listing = json.load(resp)
            except urllib.error.HTTPError as e:  # the server answered, but not with the notebooks
                pytest.fail(f"JupyterLab answered {e.code} for /api/contents/notebooks")
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"`make lab` exited early with code {proc.returncode}")
                time.sleep(1)
        assert listing is not None, "JupyterLab did not answer within 90 s"
        assert listing["type"] == "directory"
        names = {item["name"] for item in listing["content"]}
        expected = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
        assert expected <= names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as resp:
            assert resp.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
