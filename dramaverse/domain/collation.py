"""Title collation as JavaScript's ``localeCompare`` (ICU root order), via pyuca.

The catalog breaks score ties by title in this order, so each title gets an integer rank once
at index build time and queries compare integers.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyuca

__all__ = ["collation_ranks"]

IdArray = npt.NDArray[np.intp]  # one rank per title

_CharWeights = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], frozenset[int]]


class _SortKeys:
    """pyuca sort keys (ICU root order, as ``localeCompare``), computed faster for most titles.

    pyuca maps a string to collation elements and lays their weights out level by level. For a
    character that NFD leaves alone, that is not combining, and has its own table entry, the
    elements are that entry, unless the next character completes a contraction (``l`` + ``·``).
    Strings made only of such characters get their key from per-character weights; anything
    else goes through pyuca itself. Tests check the two agree.
    """

    def __init__(self) -> None:
        self._collator = pyuca.Collator()  # loads its table once (~0.3 s)
        self._table: dict[int, Any] = self._collator.table.root.children
        self._chars: dict[str, _CharWeights | None] = {}

    def _learn(self, char: str) -> _CharWeights | None:
        node = self._table.get(ord(char))
        weights: _CharWeights | None = None
        if (
            node is not None
            and node.value
            and unicodedata.normalize("NFD", char) == char
            and unicodedata.combining(char) == 0
        ):
            elements = node.value
            weights = (
                tuple(element[0] for element in elements if element[0]),
                tuple(element[1] for element in elements if element[1]),
                tuple(element[2] for element in elements if element[2]),
                frozenset(node.children or ()),
            )
        self._chars[char] = weights
        return weights

    def __call__(self, text: str) -> tuple[int, ...]:
        chars = self._chars
        primary: list[int] = []
        secondary: list[int] = []
        tertiary: list[int] = []
        last = len(text) - 1
        for position, char in enumerate(text):
            weights = chars[char] if char in chars else self._learn(char)
            if weights is None or (
                weights[3] and position < last and ord(text[position + 1]) in weights[3]
            ):
                key: tuple[int, ...] = self._collator.sort_key(text)
                return key
            primary += weights[0]
            secondary += weights[1]
            tertiary += weights[2]
        return (*primary, 0, *secondary, 0, *tertiary, 0)


_SORT_KEYS: _SortKeys | None = None
_SORT_KEYS_LOCK = threading.Lock()


def _sort_keys() -> _SortKeys:
    global _SORT_KEYS
    with _SORT_KEYS_LOCK:
        if _SORT_KEYS is None:
            _SORT_KEYS = _SortKeys()
        return _SORT_KEYS


def collation_ranks(titles: Sequence[str]) -> IdArray:
    """Rank of each title in ICU root collation order (``localeCompare``); equal titles tie."""
    sort_key = _sort_keys()
    keys = {title: sort_key(title) for title in set(titles)}
    rank_of_key = {key: rank for rank, key in enumerate(sorted(set(keys.values())))}
    rank_of_title = {title: rank_of_key[key] for title, key in keys.items()}
    return np.fromiter((rank_of_title[title] for title in titles), dtype=np.intp, count=len(titles))
