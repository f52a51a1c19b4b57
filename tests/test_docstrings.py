"""Every public name of lmm_jax has a docstring, and every callable's docstring names its arguments.

The public API here: each name in ``lmm_jax.__all__``, the public methods and properties of the
public classes (their own and those inherited from lmm_jax classes; a NamedTuple's fields are
covered by its class docstring's ``Attributes:``), and :func:`lmm_jax.runtime.configure`.
"""

import dataclasses
import functools
import importlib
import inspect
import re

import lmm_jax
from lmm_jax.errors import LMMError

# Public classes by module: ``lmm_jax.__all__``'s classes and those its functions return.
CLASSES = [("lmm_jax.model", "LMM"), ("lmm_jax.results", "LMMResult"), ("lmm_jax.batched.batch", "BatchResult"),
           ("lmm_jax.batched.bootstrap", "BootstrapResult"), ("lmm_jax.planning", "PowerResult"),
           ("lmm_jax.batched.modcomp", "PBModComp"), ("lmm_jax.inference.emmeans", "EMMeans"),
           ("lmm_jax.report.summary", "Summary"), ("lmm_jax.core.estimates", "Estimates"),
           ("lmm_jax.core.types", "CrossProducts")]


def _own(cls: type) -> dict[str, object]:
    """Public members ``cls`` defines or inherits from lmm_jax classes (not from object, tuple, str, ...)."""
    fields = set(getattr(cls, "_fields", ()))  # NamedTuple and dataclass fields: the class's Attributes
    fields |= {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    members: dict[str, object] = {}
    for base in reversed(cls.__mro__):
        if not base.__module__.startswith("lmm_jax"):
            continue
        for name, value in vars(base).items():
            if not name.startswith("_") and name not in fields:
                members[name] = value
    return members


def _callable(value: object):
    """The function behind a member (unwrapping static/class methods and properties), or None for data."""
    if isinstance(value, (staticmethod, classmethod)):
        return value.__func__
    if isinstance(value, property):
        return None
    if isinstance(value, functools.cached_property):
        return None
    return value if callable(value) and not isinstance(value, type) else None


def _public_api() -> list[tuple[str, object]]:
    """(qualified name, object) of every public function, class, method and property."""
    api: list[tuple[str, object]] = []
    for name in lmm_jax.__all__:
        obj = getattr(lmm_jax, name)
        if inspect.ismodule(obj):
            continue
        if isinstance(obj, type) and issubclass(obj, (LMMError, Warning)):
            continue  # exception classes: their docstrings are checked by test_errors_have_docstrings
        api.append((f"lmm_jax.{name}", obj))
    for module, name in CLASSES:
        cls = getattr(importlib.import_module(module), name)
        if (f"lmm_jax.{name}", cls) not in api:
            api.append((f"{module}.{name}", cls))
        for member, value in _own(cls).items():
            api.append((f"{name}.{member}", value))
    api.append(("lmm_jax.runtime.configure", importlib.import_module("lmm_jax.runtime").configure))
    return api


def _doc(value: object) -> str:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, (property, functools.cached_property)):
        return inspect.cleandoc(value.__doc__ or "")
    if isinstance(value, type):
        doc = inspect.cleandoc(value.__doc__ or "")  # not inherited: a class's own docstring
        # dataclass and NamedTuple write "Name(field, ...)" where the class has none
        return "" if re.fullmatch(rf"{value.__name__}\(.*\)", doc, re.S) else doc
    return inspect.cleandoc(getattr(value, "__doc__", None) or "")


def _arguments(value: object) -> list[str]:
    """The named parameters of a callable (its ``__init__``'s for a class), less self/cls, *args and **kwargs."""
    func = value.__init__ if isinstance(value, type) else _callable(value)
    if func is None or func is object.__init__:
        return []
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [p.name for p in signature.parameters.values()
            if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _argument_section(doc: str) -> str:
    """The text of a Google-style docstring's ``Args:``, ``Arguments:``, ``Parameters:`` or ``Attributes:`` sections."""
    out, inside = [], False
    for line in doc.splitlines():
        if re.fullmatch(r"(Args|Arguments|Parameters|Attributes|Keyword Args):", line.strip()) and not line.startswith(" "):
            inside = True
        elif line and not line.startswith(" "):
            inside = False
        elif inside:
            out.append(line)
    return "\n".join(out)


def test_public_api_is_found():
    """The collection reaches the names the checks are about (a broken collector must not pass)."""
    names = {name for name, _ in _public_api()}
    for expected in ("lmm_jax.fit", "lmm_jax.LMM", "LMMResult.aic", "LMMResult.predict", "LMMResult.anova",
                     "BatchResult.coef_table", "EMMeans.contrast", "Summary.fit_statistics", "lmm_jax.runtime.configure"):
        assert expected in names, f"{expected} missing from the collected public API"
    assert len(names) > 100


def test_every_public_name_has_a_docstring():
    missing = [name for name, value in _public_api() if not _doc(value)]
    assert not missing, f"{len(missing)} public names without a docstring: {', '.join(missing)}"


def test_every_public_callable_documents_its_arguments():
    bad = []
    for name, value in _public_api():
        doc = _doc(value)
        if isinstance(value, type):
            doc += "\n" + inspect.cleandoc(getattr(value.__init__, "__doc__", None) or "")
        section = _argument_section(doc)
        absent = [a for a in _arguments(value) if not re.search(rf"(?<![\w.]){re.escape(a)}\b", section)]
        if absent and doc:
            bad.append(f"{name} ({', '.join(absent)})")
    assert not bad, f"{len(bad)} public callables whose docstring omits arguments: {'; '.join(bad)}"


def test_errors_have_docstrings():
    errors = [name for name in lmm_jax.__all__
              if isinstance(getattr(lmm_jax, name), type) and issubclass(getattr(lmm_jax, name), (LMMError, Warning))]
    assert errors
    missing = [name for name in errors if not inspect.getdoc(getattr(lmm_jax, name))]
    assert not missing, f"errors without a docstring: {', '.join(missing)}"
