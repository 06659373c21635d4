"""The inline check, the switch that turns the package's own implementations off, the wire format, the
reference answers (held to kanedu), and the grading CLI's usage errors."""

import functools
import json
import math
import statistics
import subprocess
import sys
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import kanedu
import kanedu.splines
from kanedu import KAN, count_parameters
from kanedu.grading import PARTS, answers, check, wire
from kanedu.grading.__main__ import main as grading_cli
from kanedu.grading.guard import SwitchedOff

ROOT = Path(__file__).resolve().parents[1]


def _solution_answers() -> dict:
    """The answer cells of every solution notebook, run in one namespace: each part's reference answer
    as a student would write it."""
    namespace = {"torch": torch, "F": torch.nn.functional, "np": np, "math": math, "Fraction": Fraction,
                 "statistics": statistics, "bspline_basis": kanedu.splines.bspline_basis}
    for path in sorted(ROOT.glob("solutions/*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and source.startswith("def "):
                exec(compile(source, f"{path.name}", "exec"), namespace)
    return namespace


SOLUTIONS = _solution_answers()


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # as the exercise notebooks set it
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("name", list(PARTS))
def test_the_reference_answer_of_every_part_passes_its_check(name, capsys):
    result = check(name, SOLUTIONS[PARTS[name].answer])
    assert result and result.points == PARTS[name].points, capsys.readouterr().out
    assert capsys.readouterr().out.startswith(f"✓ {name} passed")


def test_a_wrong_answer_prints_the_input_the_expected_and_the_received_value(capsys):
    def cox_de_boor(x, t, k):  # degree 0 whatever k is
        x = x[:, None]
        return ((t[:-1] <= x) & (x < t[1:])).double()[:, : len(t) - k - 1]

    result = check("ex02.cox_de_boor", cox_de_boor)
    out = capsys.readouterr().out
    assert not result and result.points == 0
    assert out.startswith("✗ ex02.cox_de_boor failed (0 of 4 points): case 2 of 3 (k = 1,")
    assert "expected B[" in out and ", got " in out and "at x = " in out and "Hint: " in out


@pytest.mark.parametrize("answer, words", [
    (lambda n: (_ for _ in ()).throw(NotImplementedError("ex01.ka_counts: replace this line")), "not answered yet"),
    (lambda n: 1 / 0, "raised ZeroDivisionError: division by zero"),
    (lambda n: sys.exit(3), "raised SystemExit"),
    (lambda n: "five", "expected a pair (outer, inner)"),
    (lambda n: (2 * n + 1, n * n), "expected (outer, inner) = (3, 3), got (3, 1)"),
    (42, "expected your ka_counts (a function or class), got int"),
])
def test_a_check_never_raises_and_says_what_went_wrong(answer, words, capsys):
    assert not check("ex01.ka_counts", answer)
    assert words in capsys.readouterr().out


def test_an_unknown_part_is_reported_not_raised(capsys):
    assert check("ex02.nonexistent", print) is None
    assert "no such exercise part" in capsys.readouterr().out


def test_the_package_cannot_answer_for_the_student_even_through_aliases(capsys):
    ref = kanedu.splines.bspline_basis  # an alias taken before the check
    partial = functools.partial(kanedu.splines.bspline_basis, method="reference")
    f = kanedu.splines.uniform_grid
    copy = types.FunctionType(f.__code__, f.__globals__, "copy", f.__defaults__, f.__closure__)
    copy.__kwdefaults__ = f.__kwdefaults__  # a new function object with the same code: escapes the swap
    attempts = {
        "ex02.cox_de_boor": [lambda x, t, k: kanedu.splines.cox_de_boor(x, t, k), lambda x, t, k: ref(x, t, k),
                             lambda x, t, k: partial(x, t, k)],
        "ex02.extended_grid": [lambda G, k, lo, hi: copy(G, k, (lo, hi), dtype=torch.float64)],
        "ex03.kan_layer": [lambda x, w_b, w_s, c, grid, k: _via_kanlayer(x, w_b, w_s, c, grid, k)],
        "ex01.koppen_psi": [answers.koppen_psi],  # the grader's own reference answers are off too
    }
    for name, tries in attempts.items():
        for answer in tries:
            result = check(name, answer)
            out = capsys.readouterr().out
            assert not result and ("package's own implementation" in out or "switched off" in out), out
    x, t = torch.rand(5), torch.linspace(0, 1, 8)
    assert torch.equal(ref(x, t, 2), kanedu.splines.bspline_basis(x, t, 2)), "switched back on after the check"


def _via_kanlayer(x, w_b, w_s, c, grid, k):
    layer = kanedu.KANLayer(x.shape[1], w_b.shape[1], grid_size=c.shape[-1] - k, spline_order=k, dtype=x.dtype)
    with torch.no_grad():
        layer.scale_base.copy_(w_b), layer.scale_spline.copy_(w_s), layer.coef.copy_(c), layer.set_grid(grid)
        return layer.forward_reference(x)


def test_an_answer_that_switches_the_package_back_on_is_caught():
    originals = {"code": kanedu.splines.uniform_grid.__code__}

    def restore_and_call():
        kanedu.splines.uniform_grid.__code__ = originals["code"]
        sys.setprofile(None)
        return kanedu.splines.uniform_grid(3, 1)

    with SwitchedOff(["kanedu.splines:uniform_grid"]) as off:
        restore_and_call()
    assert off.tampered
    assert kanedu.splines.uniform_grid.__code__ is originals["code"]


def test_every_switched_off_target_exists_in_the_package():
    # fails when a function that a part switches off is renamed or moved: update the part's `forbidden`
    for part in PARTS.values():
        off = SwitchedOff(part.switched_off)
        assert off.missing == [], f"{part.name}: {off.missing}"
        assert off._resolved.functions, part.name


def test_wire_round_trips_data_and_rejects_malformed_input():
    value = {"t": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([True, False]), "f": [1.5, float("inf")],
             "q": Fraction(3, 7), "tuple": (1, "x", None), "keys": {2: "two"}}
    back = wire.decode(json.loads(json.dumps(wire.encode(value))))
    assert torch.equal(back["t"], value["t"]) and back["t"].dtype == value["t"].dtype
    assert torch.equal(back["b"], value["b"]) and back["f"] == value["f"] and back["q"] == value["q"]
    assert back["tuple"] == value["tuple"] and back["keys"] == {2: "two"}
    assert isinstance(wire.decode(wire.encode(object())), wire.Unsupported)
    header = wire.encode(torch.zeros(4))["$tensor"]
    for bad in ({"$tensor": [header[0], [5], header[2]]}, {"$tensor": ["object", [1], ""]},
                {"$tensor": [header[0], [10**9], ""]}, {"$fraction": [1, 0]}, {"$mystery": 1}):
        with pytest.raises(wire.WireError):
            wire.decode(bad)


def test_reference_answers_agree_with_kanedu():
    gen = torch.Generator().manual_seed(0)
    for widths, k, n in [([2, 5, 1], 3, 300), ([3, 2], 1, 50), ([1, 1], 0, 7)]:
        G = answers.overfit_grid(widths, k, n)
        assert count_parameters(KAN(widths, grid_size=G, spline_order=k)) > n
        assert G == 1 or count_parameters(KAN(widths, grid_size=G - 1, spline_order=k)) <= n
    model = KAN([3, 2], grid_size=4, seed=0, dtype=torch.float64)
    x = torch.rand(50, 3, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        phi = model.layers[0].edge_activations(x)  # [N, out, in]
        torch.testing.assert_close(answers.sparsity_penalty(phi, x, 2.0), model.regularization_loss(x))
        out_scores = torch.full((2,), 0.5, dtype=torch.float64)  # 1 / n_outputs each
        torch.testing.assert_close(answers.edge_scores(phi, out_scores), model.attribution(x)[1][0])


def test_importing_kanedu_does_not_import_the_grader():
    code = "import sys, kanedu; print(any(m.startswith('kanedu.grading') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("args, message", [
    ([], "required"),
    (["no/such/folder", "--out", "g.csv"], "no such file or folder"),
    (["{empty}", "--out", "g.csv"], "no notebooks"),
    (["{text}", "--out", "g.csv"], "not a notebook"),
    (["{nb}", "--out", "missing/g.csv"], "does not exist"),
    (["{nb}", "--out", "{empty}"], "is a folder"),
    (["{nb}", "--out", "g.csv", "--jobs", "0"], "--jobs must be positive"),
    (["{nb}", "--out", "g.csv", "--timeout", "soon"], "--timeout must be a number"),
    (["{nb}", "--out", "g.csv", "--memory", "100"], "at least 512 MiB"),
])
def test_usage_errors_exit_with_2_and_say_what_is_wrong(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "a.ipynb").write_text("{}")
    args = [a.format(empty=tmp_path / "empty", text=tmp_path / "notes.txt", nb=tmp_path / "a.ipynb") for a in args]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        grading_cli(["grade", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()


def _same(a, b) -> bool:
    return json.dumps(wire.encode(a), sort_keys=True) == json.dumps(wire.encode(b), sort_keys=True)


@pytest.mark.parametrize("name", list(PARTS))
def test_hidden_inputs_depend_on_the_grading_seed_and_only_on_it(name):
    part = PARTS[name]

    def draw(seed):
        return part.cases(torch.Generator().manual_seed(seed), True)

    inline = part.cases(torch.Generator().manual_seed(0), False)
    assert _same(draw(11), draw(11)), "--seed reproduces the hidden inputs"
    assert not _same(draw(11), draw(12)), "another seed draws other inputs"
    assert len(draw(11)) > len(inline), "the grader checks more cases than the inline check"
