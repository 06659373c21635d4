"""kanedu.widgets: direct call without a frontend, validation of controls."""

import pytest

from kanedu.widgets import Choice, FloatSlider, Slider, Toggle, has_widget_frontend, interactive


def test_without_frontend_the_function_runs_once_with_defaults():
    calls = []

    def f(a, b, c, d):
        calls.append((a, b, c, d))
        return "done"

    assert not has_widget_frontend()  # plain pytest: no Jupyter kernel
    out = interactive(f, a=Slider(3, 0, 5), b=FloatSlider(0.5, 0.0, 1.0), c=Choice("x", ("x", "y")), d=Toggle(True))
    assert out == "done" and calls == [(3, 0.5, "x", True)]


def test_errors_in_the_function_surface_without_frontend():
    def broken(a):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        interactive(broken, a=Slider(1, 0, 2))


def test_bad_controls():
    with pytest.raises(ValueError, match=r"in \[min, max\] = \[0, 5\], got 9"):
        Slider(9, 0, 5)
    with pytest.raises(ValueError, match="not one of"):
        Choice("z", ("x", "y"))
    with pytest.raises(TypeError, match="must be a Slider"):
        interactive(lambda a: a, a=3)
