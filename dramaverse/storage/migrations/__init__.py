"""Numbered SQL migrations, one folder per backend: ``NNNN_name.sql``, applied in order."""

from __future__ import annotations

from importlib import resources


def bundled(backend: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped for ``backend``, in version order."""
    found = []
    for entry in resources.files(f"{__name__}.{backend}").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort()
    return found
