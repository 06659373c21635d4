"""Launching the course: Colab and Binder headers, the Binder environment, and installing next to Colab's torch.

``tools/launch.py`` is the one place naming the repository and the pinned release; every notebook is
checked against it. ``environment.yml`` must pin what ``requirements/constraints.txt`` pins. Installing
kanedu where torch and numpy already are (Colab) must not bring a second copy of either.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import kanedu
from kanedu.grading.generate import generate_notebook, read_notebook
from tools import launch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = launch.notebooks()
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}  # PyPI name -> conda-forge name


def _source(cell):
    return "".join(cell["source"])


@pytest.mark.parametrize("rel, path", NOTEBOOKS, ids=[rel for rel, _ in NOTEBOOKS])
def test_every_notebook_opens_with_its_own_badges_and_the_colab_setup_cell(rel, path):
    assert not launch.header_problems(read_notebook(path), rel), "run `python tools/launch.py`"


def test_the_launch_script_has_nothing_to_change():
    assert launch.main(["--check"]) == 0, "run `python tools/launch.py` (it also regenerates exercises/)"


def test_the_pinned_ref_is_the_release_tag_not_a_branch():
    assert launch.REF == f"v{kanedu.__version__}"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", launch.REF)
    assert f"@{launch.REF}\")" in launch.SETUP_CELL and 'if "google.colab" in sys.modules' in launch.SETUP_CELL


def test_the_badges_and_the_install_all_point_at_the_pinned_ref():
    path = "notebooks/02_bsplines.ipynb"
    assert launch.colab_url(path).endswith(f"/{launch.OWNER}/{launch.NAME}/blob/{launch.REF}/{path}")
    binder = f"/{launch.OWNER}/{launch.NAME}/{launch.REF}?labpath=notebooks%2F02_bsplines.ipynb"
    assert launch.binder_url(path).endswith(binder)
    assert launch.badges(path).count(launch.REF) == 2


def test_the_repository_url_is_written_only_by_the_launch_script():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    written = {"tools/launch.py", "README.md"} | {rel for rel, _ in NOTEBOOKS}
    needle = f"{launch.OWNER}/{launch.NAME}"
    others = [f for f in tracked if f not in written and (ROOT / f).is_file()
              and needle in (ROOT / f).read_text(encoding="utf-8", errors="replace")]
    assert not others, f"{others} name the repository: take it from tools/launch.py instead"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for url in re.findall(r"https://[^\s)\]]*" + re.escape(needle) + r"[^\s)\]]*", readme):
        assert url == launch.REPOSITORY or launch.REF in url, f"README link {url} is not pinned to {launch.REF}"


def test_a_notebook_without_a_header_gets_one_and_a_second_run_changes_nothing():
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Lesson 99: X\n", "\n", "Text."]},
                    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": ["1"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    once = launch.with_header(nb, "notebooks/99_x.ipynb")
    assert not launch.header_problems(once, "notebooks/99_x.ipynb")
    assert _source(once["cells"][0]) == f"# Lesson 99: X\n\n{launch.badges('notebooks/99_x.ipynb')}\n\nText."
    assert _source(once["cells"][2]) == "1"
    assert launch.with_header(once, "notebooks/99_x.ipynb") == once


def test_the_exercise_generator_turns_solution_badges_into_the_exercises_own():
    for rel, path in launch.notebooks(("solutions",)):
        exercise = generate_notebook(read_notebook(path), path)
        assert not launch.header_problems(exercise, rel.replace("solutions/", "exercises/", 1))


# --- Binder -----------------------------------------------------------------------------------------


def _constraints():
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        assert isinstance(dep, str), f"environment.yml: conda-forge packages only, no pip section ({dep})"
        name, _, rest = dep.partition("=")
        pins[name] = rest
    return env, pins


def _requirement_name(req):
    return re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()


def test_environment_yml_is_conda_forge_only_with_an_exact_python_and_cpu_pytorch():
    env, pins = _environment()
    assert env["channels"][0] == "conda-forge" and set(env["channels"]) <= {"conda-forge", "nodefaults"}
    assert re.fullmatch(r"3\.\d+\.\d+", pins["python"]), f"an exact Python, got python={pins['python']}"
    assert re.fullmatch(r"[\d.]+=cpu_\*", pins["pytorch"]), "the CPU build of pytorch (build string cpu_*)"


def test_environment_yml_pins_every_dependency_as_the_constraints_do():
    _, pins = _environment()
    constraints = _constraints()
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = [_requirement_name(r) for r in project["dependencies"] + project["optional-dependencies"]["widgets"]]
    needed += ["nbval", "pytest", "ipykernel", "jupyterlab", "llvmlite"]  # validate a notebook there (nbval)
    for name in needed:
        conda = CONDA_NAMES.get(name, name)
        assert conda in pins, f"environment.yml lacks {conda} (pyproject/dev needs {name})"
        assert pins[conda].split("=")[0] == constraints[name], (
            f"environment.yml pins {conda}={pins[conda]}, requirements/constraints.txt {name}=={constraints[name]}")
    for conda, version in pins.items():
        name = {v: k for k, v in CONDA_NAMES.items()}.get(conda, conda)
        if name in constraints:
            assert version.split("=")[0] == constraints[name], f"{conda}: {version} != constraints {constraints[name]}"


def test_environment_yml_covers_everything_the_notebooks_import():
    _, pins = _environment()
    modules = set()
    for _, path in NOTEBOOKS:
        for cell in read_notebook(path)["cells"]:
            if cell["cell_type"] == "code":
                modules |= set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", _source(cell), flags=re.M))
    dists = __import__("importlib.metadata").metadata.packages_distributions()
    for module in sorted(modules - set(sys.stdlib_module_names) - {"kanedu"}):
        for dist in dists.get(module, [module]):
            name = dist.lower().replace("_", "-")
            assert CONDA_NAMES.get(name, name) in pins, (
                f"a notebook imports {module} ({dist}): add it to environment.yml")


def test_postbuild_is_executable_and_installs_kanedu_without_dependencies():
    post = ROOT / "postBuild"
    assert os.access(post, os.X_OK)
    mode = subprocess.run(["git", "ls-files", "-s", "postBuild"], cwd=ROOT, capture_output=True, text=True).stdout
    assert mode.startswith("100755"), "postBuild must be committed executable"
    assert "pip install --no-deps -e ." in post.read_text()


# --- Colab: installing kanedu next to torch and numpy ----------------------------------------------


def _pip(python, *args, timeout=300):
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_installing_kanedu_next_to_pinned_torch_and_numpy_adds_no_second_copy(tmp_path):
    """Colab ships torch and numpy; ``pip install kanedu`` there must leave both alone.

    The virtualenv gets the pinned torch and numpy of this checkout's ``.venv`` (linked, not
    downloaded), then ``pip install --dry-run --report`` resolves kanedu from this checkout against
    the package index. Skipped when no index answers (offline).
    """
    import numpy
    import torch

    if _pip(sys.executable, "index", "versions", "setuptools", timeout=60).returncode != 0:
        pytest.skip("no package index reachable: pip cannot resolve kanedu's dependencies offline")
    venv = tmp_path / "colab"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for module in (torch, numpy):
        package = Path(module.__file__).parent
        for item in [package, *package.parent.glob(f"{module.__name__}-{module.__version__}*.dist-info")]:
            (site / item.name).symlink_to(item)
    libs = Path(numpy.__file__).parent.parent / "numpy.libs"
    if libs.exists():
        (site / libs.name).symlink_to(libs)
    listed = json.loads(_pip(python, "list", "--format=json").stdout)
    assert {p["name"] for p in listed} >= {"torch", "numpy"}, listed

    report = tmp_path / "report.json"
    done = _pip(python, "install", "--dry-run", "--quiet", "--report", str(report), str(ROOT), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    install = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "kanedu" in install, install
    assert "torch" not in install and "numpy" not in install, (
        f"pip would install a second torch/numpy next to Colab's: {install}")
    assert not [n for n in install if n.startswith(("nvidia-", "triton"))], f"a CUDA stack would come along: {install}"
