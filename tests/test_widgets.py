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


def test_with_a_frontend_the_return_value_is_never_displayed(monkeypatch):
    """Issue 16: ``interact`` displayed the demo's return value (a wall of tensors) on every slider move."""
    import IPython.display
    import ipywidgets.widgets.interaction as interaction

    import kanedu.widgets as kw

    shown, calls = [], []
    monkeypatch.setattr(kw, "has_widget_frontend", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw_: shown.extend(objs))
    monkeypatch.setattr(interaction, "display", lambda *objs, **kw_: shown.extend(objs))

    def demo(a, b=0.5):
        calls.append((a, b))
        return {"values": list(range(a))}

    assert interactive(demo, a=Slider(3, 0, 5), b=FloatSlider(0.5, 0.0, 1.0)) is None
    assert calls == [(3, 0.5)], "the first draw runs the demo once with the defaults"
    boxes = [obj for obj in shown if hasattr(obj, "children")]
    assert len(boxes) == 1 and len(shown) == 1, f"only the controls are displayed, got {shown!r}"
    sliders = [c for c in boxes[0].children if getattr(c, "description", None) in ("a", "b")]
    assert [s.description for s in sliders] == ["a", "b"], "ipywidgets sees the demo's own arguments"
    sliders[0].value = 4  # a slider move redraws ...
    assert calls[-1] == (4, 0.5)
    assert len(shown) == 1, f"... and displays nothing else, got {shown[1:]!r}"
    assert demo(2) == {"values": [0, 1]}, "the direct call still returns the value for the asserts"
