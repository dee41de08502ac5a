"""One file per method behind the small interface of ``base.Method``; ``get_method`` looks one up by name.

The registry is discovered: every module of this package that defines ``METHODS`` (a tuple of its ``Method``
classes) adds them, so a new method is one new file (its ``Params``, ``recipe`` and ``Method``) and no edit here.
"""

from __future__ import annotations

import importlib
import pkgutil

from wilson_ray.errors import UserError
from wilson_ray.methods.base import Method


def _discover() -> dict[str, type[Method]]:
    """``{name: class}`` of the ``METHODS`` of every module of this package, in module-name order."""
    found: dict[str, type[Method]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in getattr(module, "METHODS", ()):
            if cls.name in found:
                raise RuntimeError(f"method {cls.name!r}: in {found[cls.name].__module__} and {module.__name__}")
            found[cls.name] = cls
    return found


METHODS: dict[str, type[Method]] = _discover()


def get_method(name: str) -> type[Method]:
    """The method class called ``name``; a UserError lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"method: unknown method {name!r}, expected one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "get_method"]
