"""errors.py draws the exception tree in its docstring: the drawing is the tree."""

from __future__ import annotations

import importlib
import pkgutil
import re

import dramaverse
from dramaverse import errors
from dramaverse.errors import DramaverseError


def drawn_tree() -> dict[str, tuple[str | None, int | None]]:
    """name -> (parent name, status drawn in parentheses) for every class in the drawing."""
    assert errors.__doc__ is not None
    tree: dict[str, tuple[str | None, int | None]] = {}
    stack: list[str] = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"^ {4}([│├└─ ]*)([A-Z][A-Za-z]+)(?: \((\d{3})\))?", line)
        if not match:
            continue
        depth = len(match[1]) // 4
        del stack[depth:]
        assert len(stack) == depth, f"a class drawn below nothing: {line}"
        tree[match[2]] = (stack[-1] if stack else None, int(match[3]) if match[3] else None)
        stack.append(match[2])
    return tree


def defined_tree() -> dict[str, type[DramaverseError]]:
    for module in pkgutil.walk_packages(dramaverse.__path__, "dramaverse."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: dict[str, type[DramaverseError]] = {}
    pending: list[type[DramaverseError]] = [DramaverseError]
    while pending:
        cls = pending.pop()
        assert cls.__name__ not in found, f"two exceptions named {cls.__name__}"
        found[cls.__name__] = cls
        pending += cls.__subclasses__()
    return found


def test_the_drawn_tree_is_the_defined_tree() -> None:
    drawn = drawn_tree()
    defined = defined_tree()
    assert sorted(drawn) == sorted(defined)
    for name, cls in defined.items():
        parent, status = drawn[name]
        base = cls.__bases__[0]
        assert parent == (None if cls is DramaverseError else base.__name__), name
        if cls is not DramaverseError and cls.status != base.status:
            assert status == cls.status, f"{name} answers {cls.status}: draw it"
        if status is not None:
            assert status == cls.status, name
