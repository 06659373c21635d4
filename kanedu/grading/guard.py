"""Switch the package's own implementations off while a student's answer runs.

An exercise such as "write the Cox-de Boor recursion" would be pointless if calling
``kanedu.splines.cox_de_boor`` counted. While an answer is checked, :class:`SwitchedOff` therefore

1. swaps the **code object** of every forbidden function for one that raises. The function object
   itself stays where it is, so every alias a student took earlier (``from kanedu.splines import
   cox_de_boor as ref``, a ``functools.partial``, a bound method, a list holding the function) now
   raises too, which replacing a module attribute would not achieve;
2. installs a profile hook that records every Python frame executing forbidden code, matched by file
   and qualified name, so copies of the code (``types.FunctionType(f.__code__, ...)``, a reloaded module)
   are caught even though they bypass the swap;
3. checks on the way out that the hook and the swapped code are still in place (an answer that
   restores them has tampered with the check), then restores everything.

A target is a string: ``"pkg.module"`` (every function and class defined in that module),
``"pkg.module:name"`` (a function or a class, i.e. all its methods) or ``"pkg.module:Class.method"``.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from dataclasses import dataclass, field

__all__ = ["SwitchedOff", "resolve"]

_RAISER_FILE = "<kanedu.grading: switched off>"


@dataclass
class _Resolved:
    functions: list[types.FunctionType] = field(default_factory=list)  # code objects to swap
    labels: dict[int, str] = field(default_factory=dict)  # id(function) -> "kanedu.splines.cox_de_boor"
    files: dict[str, str] = field(default_factory=dict)  # whole modules: file -> module name
    names: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # file -> [(qualname, label)]
    missing: list[str] = field(default_factory=list)  # targets that do not exist (any more)


def _functions_of(obj):
    """Plain functions behind ``obj``: itself, the layers of decorators (``__wrapped__``), and for a
    class every function, static/class method and property accessor in its ``__dict__``."""
    if isinstance(obj, type):
        for value in vars(obj).values():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                for accessor in (value.fget, value.fset, value.fdel):
                    if accessor is not None:
                        yield from _functions_of(accessor)
            elif callable(value) and not isinstance(value, type):
                yield from _functions_of(value)
        return
    seen = set()
    while obj is not None and id(obj) not in seen:
        seen.add(id(obj))
        if isinstance(obj, types.FunctionType):
            yield obj
        obj = getattr(obj, "__wrapped__", None)


def _innermost(fn):
    while getattr(fn, "__wrapped__", None) is not None:
        fn = fn.__wrapped__
    return fn


def _add_function(res: _Resolved, fn: types.FunctionType, label: str) -> None:
    if id(fn) not in res.labels:
        res.functions.append(fn)
        res.labels[id(fn)] = label


def resolve(targets) -> _Resolved:
    """Resolve target strings (see the module docstring) into functions, files and qualified names."""
    res = _Resolved()
    for target in targets:
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            res.missing.append(target)
            continue
        if not attr:  # the whole module
            file = getattr(module, "__file__", None)
            if file:
                res.files[file] = module_name
            for obj in list(vars(module).values()):
                if getattr(obj, "__module__", None) != module_name:
                    continue
                if isinstance(obj, type) or callable(obj):
                    for fn in _functions_of(obj):
                        _add_function(res, fn, f"{module_name}.{_innermost(fn).__qualname__}")
            continue
        obj = module
        try:
            for part in attr.split("."):
                obj = vars(obj)[part] if isinstance(obj, type) and part in vars(obj) else getattr(obj, part)
        except AttributeError:
            res.missing.append(target)
            continue
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        label = f"{module_name}.{attr}"
        for fn in _functions_of(obj):
            _add_function(res, fn, label)
            inner = _innermost(fn)
            res.names.setdefault(inner.__code__.co_filename, []).append((inner.__qualname__, label))
    return res


_raiser_cache: dict[tuple[int, str, str], types.CodeType] = {}


def _raiser_code(fn: types.FunctionType, label: str) -> types.CodeType:
    """A code object that raises ``RuntimeError`` naming ``label``, with as many free variables as
    ``fn`` has (CPython only lets a function take code with the same number of closure cells)."""
    n_free = len(fn.__code__.co_freevars)
    name = fn.__code__.co_name if fn.__code__.co_name.isidentifier() else "switched_off"
    key = (n_free, name, label)
    if key not in _raiser_cache:
        free = [f"_free{i}" for i in range(n_free)]
        message = (f"{label} is switched off while this answer is checked: "
                   "the exercise asks for your own code, so calling the package does not count")
        lines = ["def _make():"]
        if free:
            lines.append(f"    {', '.join(free)} = {', '.join(['None'] * n_free)}")
        lines.append(f"    def {name}(*args, **kwargs):")
        if free:  # referenced in a dead branch: the cells are never read, only counted
            lines.append(f"        if False:\n            ({', '.join(free)},)")
        lines.append(f"        raise RuntimeError({message!r})")
        lines.append(f"    return {name}")
        namespace: dict = {}
        exec(compile("\n".join(lines) + "\n", _RAISER_FILE, "exec"), namespace)
        _raiser_cache[key] = namespace["_make"]().__code__
    return _raiser_cache[key]


class SwitchedOff:
    """Context manager: the forbidden ``targets`` raise, and any execution of their code is recorded.

    After the ``with`` block, ``hits`` lists the labels of forbidden code that ran (empty if none),
    and ``tampered`` says whether the code inside the block undid the switches (``None`` if not).

    >>> with SwitchedOff(["kanedu.splines:cox_de_boor"]) as off:
    ...     answer(x, grid, k)
    >>> off.hits
    []
    """

    def __init__(self, targets):
        self.targets = tuple(targets)
        self._resolved = resolve(self.targets)
        self.hits: list[str] = []
        self.tampered: str | None = None
        self._saved: list[tuple[types.FunctionType, types.CodeType, types.CodeType]] = []
        self._raisers: dict[types.CodeType, str] = {}
        self._hook = self._make_hook()

    @property
    def missing(self) -> list[str]:
        """Targets that could not be found (a renamed function): a unit test keeps this empty."""
        return list(self._resolved.missing)

    def _make_hook(self):
        files = self._resolved.files
        names = self._resolved.names
        raisers = self._raisers
        hits = self.hits

        def hook(frame, event, arg):
            if event != "call":
                return
            code = frame.f_code
            label = raisers.get(code)
            if label is None:
                file = code.co_filename
                if file in files:
                    label = f"{files[file]}.{code.co_qualname}"
                elif file in names:
                    qual = code.co_qualname
                    for prefix, lab in names[file]:
                        if qual == prefix or qual.startswith(prefix + "."):
                            label = lab
                            break
            if label is not None and label not in hits:
                hits.append(label)

        return hook

    def __enter__(self) -> SwitchedOff:
        self.hits.clear()
        self.tampered = None
        self._saved = []
        for fn in self._resolved.functions:
            label = self._resolved.labels[id(fn)]
            raiser = _raiser_code(fn, label)
            self._raisers[raiser] = label
            self._saved.append((fn, fn.__code__, raiser))
            fn.__code__ = raiser
        self._previous = (sys.getprofile(), threading.getprofile())
        sys.setprofile(self._hook)
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *exc) -> bool:
        current = sys.getprofile()
        sys.setprofile(self._previous[0])
        threading.setprofile(self._previous[1])
        if current is not self._hook:
            self.tampered = "the profile hook that watches for the package's code was removed"
        for fn, original, raiser in self._saved:
            if fn.__code__ is not raiser and self.tampered is None:
                self.tampered = f"the switched-off {self._resolved.labels[id(fn)]} was switched back on"
            fn.__code__ = original
        self._saved = []
        return False


def switched_off_error(exc: BaseException) -> str | None:
    """The label of the switched-off function that raised ``exc`` (walking its traceback), or None."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == _RAISER_FILE:
            message = str(exc)
            if " is switched off" in message:
                return message.split(" is switched off", 1)[0]
            return "a switched-off function"
        tb = tb.tb_next
    return None
