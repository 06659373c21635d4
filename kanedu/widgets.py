"""Interactive demos that degrade gracefully (lessons 01-04).

``interactive(fn, x=Slider(...), ...)`` shows ipywidgets controls that re-run ``fn`` when a notebook
frontend is available, and otherwise calls ``fn`` once with the default values. Exceptions inside
ipywidgets callbacks are only printed, never raised, so a lesson should also call ``fn`` directly
in a normal cell: that call is what CI checks.

A widget demo never shows ``fn``'s return value: ``ipywidgets.interact`` displays whatever the function
returns (a trailing ``;`` does not hide it), so a demo that returns its data for the direct call's
asserts printed that data under the figure again on every slider move. ``interactive`` therefore
runs ``fn`` through a wrapper that drops the value; the direct call ``fn(...)`` still returns it.

Example::

    def show_basis(order=3, grid_size=5):
        ...
    show_basis()                                        # checked by CI
    interactive(show_basis, order=Slider(3, 0, 5), grid_size=Slider(5, 1, 20))
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Slider", "FloatSlider", "Choice", "Toggle", "interactive", "has_widget_frontend"]


@dataclass(frozen=True)
class Slider:
    """An integer slider: ``value`` in ``[min, max]`` with ``step``."""

    value: int
    min: int
    max: int
    step: int = 1

    def __post_init__(self):
        if not self.min <= self.value <= self.max:
            raise ValueError(f"Slider value must be in [min, max] = [{self.min}, {self.max}], got {self.value}")

    def widget(self, name):
        import ipywidgets as w

        return w.IntSlider(value=self.value, min=self.min, max=self.max, step=self.step, description=name,
                           continuous_update=False)


@dataclass(frozen=True)
class FloatSlider:
    """A float slider: ``value`` in ``[min, max]`` with ``step``."""

    value: float
    min: float
    max: float
    step: float = 0.01

    def __post_init__(self):
        if not self.min <= self.value <= self.max:
            raise ValueError(f"FloatSlider value must be in [{self.min}, {self.max}], got {self.value}")

    def widget(self, name):
        import ipywidgets as w

        return w.FloatSlider(value=self.value, min=self.min, max=self.max, step=self.step, description=name,
                             continuous_update=False)


@dataclass(frozen=True)
class Choice:
    """A dropdown over ``options``, starting at ``value``."""

    value: Any
    options: tuple

    def __post_init__(self):
        if self.value not in self.options:
            raise ValueError(f"Choice value {self.value!r} is not one of {self.options!r}")

    def widget(self, name):
        import ipywidgets as w

        return w.Dropdown(value=self.value, options=list(self.options), description=name)


@dataclass(frozen=True)
class Toggle:
    """A checkbox."""

    value: bool

    def widget(self, name):
        import ipywidgets as w

        return w.Checkbox(value=self.value, description=name)


def has_widget_frontend() -> bool:
    """True inside a Jupyter kernel with ipywidgets installed (and ``KANEDU_NO_WIDGETS`` unset)."""
    if os.environ.get("KANEDU_NO_WIDGETS"):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _silent(fn):
    """``fn`` with its return value dropped (same signature, so ipywidgets finds the same arguments)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        fn(*args, **kwargs)

    return run


def interactive(fn, **controls):
    """Show ``fn`` with controls if a frontend exists; otherwise call ``fn(**defaults)`` and return its result.

    ``controls`` map ``fn``'s keyword arguments to ``Slider``, ``FloatSlider``, ``Choice`` or ``Toggle``.
    With a frontend the controls are displayed and ``None`` is returned: neither the first draw nor a
    slider move displays ``fn``'s return value (call ``fn(...)`` directly to get it).
    """
    for name, c in controls.items():
        if not isinstance(c, (Slider, FloatSlider, Choice, Toggle)):
            raise TypeError(f"control {name!r} must be a Slider, FloatSlider, Choice or Toggle, got {type(c).__name__}")
    if not has_widget_frontend():
        return fn(**{name: c.value for name, c in controls.items()})
    import ipywidgets as w
    from IPython.display import display

    display(w.interactive(_silent(fn), **{name: c.widget(name) for name, c in controls.items()}))
    return None
