"""The catalog index: ``GET /api/dramas`` and ``/api/dramas/metadata`` answered from memory.

Results are byte-for-byte those of the original server (``../shared/seeds/000_*.txt``): the same
filters, the same weighted sort with its float arithmetic, the same tie-breaks (JavaScript's
``localeCompare``, then catalog order) and the same JSON text. Everything that does not depend on
the query is computed once in :meth:`CatalogIndex.build`, so a query costs a few vectorised numpy
operations over the matching records plus the JSON of one page.

Thread safety: an index is immutable apart from its small LRU caches, which are guarded by a lock,
so one index may serve queries from several threads.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from itertools import islice
from typing import Any, Final, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from dramaverse.domain.catalog_query import (
    MAX_LIMIT,
    MAX_PAGE,
    MAX_SORT_PRIORITIES,
    SORT_KEYS,
    CatalogQuery,
    SortPriority,
    parse_query,
)
from dramaverse.domain.collation import collation_ranks
from dramaverse.domain.dates import parse_aired_start_ms
from dramaverse.domain.jsjson import js_json, js_number, utf16_sorted

__all__ = [
    "MAX_LIMIT",
    "MAX_PAGE",
    "MAX_SORT_PRIORITIES",
    "SORT_KEYS",
    "CatalogIndex",
    "CatalogQuery",
    "SortPriority",
    "js_json",
    "js_number",
    "parse_query",
]

FloatArray = npt.NDArray[np.float64]
IdArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]


_ORDER_CACHE_SIZE = 64
_MASK_CACHE_SIZE = 256
_SEARCH_CACHE_SIZE = 32
_SEARCH_SCAN_AFTER_HITS = 2048


# Keys the original server strips from every drama it returns (its own per-request fields).
_HIDDEN_KEYS: Final = frozenset(("url", "title", "genresSet", "tagsSet", "castSet", "score"))


def _encode_record(record: Mapping[str, Any]) -> bytes:
    ordered = {"url": record["url"], "title": record["title"]}
    for key, value in record.items():
        if key not in _HIDDEN_KEYS:
            ordered[key] = value
    return js_json(ordered)


# -- index --------------------------------------------------------------------------------------

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class _Lru(Generic[_K, _V]):
    """A small thread-safe LRU cache."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[_K, _V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _K) -> _V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: _K, value: _V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class CatalogIndex:
    """An immutable, query-ready view of the catalog (records in catalog order)."""

    metadata_json: bytes

    def __init__(
        self,
        *,
        urls: frozenset[str],
        encoded: list[bytes],
        numbers: dict[str, FloatArray],
        collation: IdArray,
        postings: dict[str, dict[str, IdArray]],
        titles_lower: list[str],
        metadata_json: bytes,
    ) -> None:
        self._urls = urls
        self._encoded = encoded
        self._count = len(encoded)
        self._numbers = numbers
        self._rating = numbers["rating"]
        self._collation = collation
        self._postings = postings
        self.metadata_json = metadata_json
        self._all_ids: IdArray = np.arange(self._count, dtype=np.intp)
        # Stable, like Array.prototype.sort: equal ranks keep catalog order.
        self._popularity_order: IdArray = np.argsort(numbers["popularity_rank"], kind="stable")
        self._popularity_position: IdArray = np.empty(self._count, dtype=np.intp)
        self._popularity_position[self._popularity_order] = self._all_ids
        # Search scans one NUL-separated string of all titles with a C-level regex. A title
        # that itself contains NUL would break the separation; such catalogs take the slow path.
        self._titles_lower = titles_lower
        self._haystack = "\0".join(titles_lower)
        self._haystack_exact = not any("\0" in title for title in titles_lower)
        lengths = np.fromiter((len(title) + 1 for title in titles_lower), np.intp, self._count)
        self._starts: IdArray = np.cumsum(lengths) - lengths
        self._order_cache: _Lru[tuple[SortPriority, ...], IdArray] = _Lru(_ORDER_CACHE_SIZE)
        self._mask_cache: _Lru[tuple[str, str], BoolArray] = _Lru(_MASK_CACHE_SIZE)
        self._search_cache: _Lru[str, IdArray] = _Lru(_SEARCH_CACHE_SIZE)

    @classmethod
    def build(cls, records: Iterable[Mapping[str, Any]]) -> CatalogIndex:
        """Index validated records (see ``records.validate_record``) in catalog order.

        ``records`` is walked once, so a generator that parses stored rows one at a time keeps
        only one record alive at a time: at 100k records that is the difference between about
        1.7 GB and a few hundred MB of resident memory.
        """
        columns: dict[str, list[float]] = {key: [] for key in SORT_KEYS}
        postings: dict[str, dict[str, list[int]]] = {
            "genres": {},
            "tags": {},
            "countries": {},
            "cast": {},
        }
        titles: list[str] = []
        encoded: list[bytes] = []
        urls: set[str] = set()
        for record_id, record in enumerate(records):
            urls.add(str(record["url"]))
            titles.append(record["title"])
            encoded.append(_encode_record(record))
            for key in ("rating", "popularity_rank", "watchers"):
                columns[key].append(float(record[key]))
            aired = parse_aired_start_ms(record["aired_date"])
            columns["aired_date"].append(math.nan if aired is None else aired)
            for name, values in (
                ("genres", record["genres"]),
                ("tags", record["tags"]),
                ("countries", (record["country"],)),
                ("cast", [member["actor_name"] for member in record["cast"]]),
            ):
                index = postings[name]
                for value in dict.fromkeys(values):  # a record counts once per value
                    index.setdefault(value, []).append(record_id)
        metadata = {
            "genres": utf16_sorted(postings["genres"]),
            "tags": utf16_sorted(postings["tags"]),
            "countries": utf16_sorted(postings["countries"]),
            "cast": utf16_sorted(postings["cast"]),
        }
        return cls(
            urls=frozenset(urls),
            encoded=encoded,
            numbers={key: np.array(values, dtype=np.float64) for key, values in columns.items()},
            collation=collation_ranks(titles) if titles else np.zeros(0, dtype=np.intp),
            postings={
                name: {value: np.array(ids, dtype=np.intp) for value, ids in index.items()}
                for name, index in postings.items()
            },
            titles_lower=[title.lower() for title in titles],
            metadata_json=js_json(metadata),
        )

    @classmethod
    def empty(cls) -> CatalogIndex:
        return cls.build([])

    def __len__(self) -> int:
        return self._count

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and url in self._urls

    def query(self, q: CatalogQuery) -> bytes:
        """The ``GET /api/dramas`` response body for ``q``."""
        ids = self._select(q)
        total = self._count if ids is None else len(ids)
        start = (q.page - 1) * q.limit
        page_ids: list[int] = []
        if start < total:
            order = self._ordered(ids, q.sort, start + q.limit)
            page_ids = order[start : start + q.limit].tolist()
        dramas = b",".join([self._encoded[record_id] for record_id in page_ids])
        total_pages = -(-total // q.limit)
        return b'{"totalItems":%d,"dramas":[%b],"currentPage":%d,"totalPages":%d}' % (
            total,
            dramas,
            q.page,
            total_pages,
        )

    # -- selection ------------------------------------------------------------------------------

    def _select(self, q: CatalogQuery) -> IdArray | None:
        """Ids of matching records in catalog order, or None for "every record"."""
        found = self._search(q.search.lower()) if q.search else None
        if not q.has_active_filters:
            return found
        mask = self._filter_mask(q)
        if mask is None:
            return np.zeros(0, dtype=np.intp)
        if found is None:
            return np.flatnonzero(mask)
        return found[mask[found]]

    def _filter_mask(self, q: CatalogQuery) -> BoolArray | None:
        """Records passing the filters, or None when a required value matches nothing."""
        mask: BoolArray = self._rating >= q.min_rating
        if q.countries:
            either = np.zeros(self._count, dtype=np.bool_)
            for country in q.countries:
                member = self._member_mask("countries", country)
                if member is not None:
                    either |= member
            mask &= either
        for name, wanted in (("genres", q.genres), ("tags", q.tags), ("cast", q.cast)):
            for value in wanted:
                member = self._member_mask(name, value)
                if member is None:
                    return None
                mask &= member
        for name, unwanted in (("genres", q.exclude_genres), ("tags", q.exclude_tags)):
            for value in unwanted:
                member = self._member_mask(name, value)
                if member is not None:
                    mask &= ~member
        return mask

    def _member_mask(self, name: str, value: str) -> BoolArray | None:
        ids = self._postings[name].get(value)
        if ids is None:
            return None
        mask = self._mask_cache.get((name, value))
        if mask is not None:
            return mask
        mask = np.zeros(self._count, dtype=np.bool_)
        mask[ids] = True
        self._mask_cache.put((name, value), mask)
        return mask

    def _search(self, term: str) -> IdArray:
        """Ids (ascending) of records whose lowercased title contains ``term``."""
        found = self._search_cache.get(term)
        if found is None:
            found = self._find_titles(term)
            self._search_cache.put(term, found)
        return found

    def _find_titles(self, term: str) -> IdArray:
        titles = self._titles_lower
        if "\0" in term or not self._haystack_exact:
            return np.array([i for i, title in enumerate(titles) if term in title], np.intp)
        # Each match also consumes the rest of its title, so a title is reported at most once.
        matches = re.compile(re.escape(term) + "[^\0]*").finditer(self._haystack)
        # Per match this costs more than testing a title, so once matches turn out to be common
        # the remaining titles are tested one by one instead.
        budget = max(_SEARCH_SCAN_AFTER_HITS, self._count // 8)
        positions = list(islice((match.start() for match in matches), budget))
        found: IdArray = np.searchsorted(self._starts, positions, side="right") - 1
        if len(positions) < budget:
            return found
        rest = range(int(found[-1]) + 1, self._count)
        more = np.array([i for i in rest if term in titles[i]], np.intp)
        return np.concatenate((found, more))

    # -- ordering -------------------------------------------------------------------------------

    def _ordered(self, ids: IdArray | None, sort: tuple[SortPriority, ...], needed: int) -> IdArray:
        """``ids`` in response order; only the first ``needed`` entries are guaranteed."""
        if not sort:
            return self._by_popularity(ids)
        if ids is None or len(ids) == self._count:
            order = self._order_cache.get(sort)
            if order is None:
                order = self._by_score(self._all_ids, sort, self._count)
                self._order_cache.put(sort, order)
            return order
        return self._by_score(ids, sort, needed)

    def _by_popularity(self, ids: IdArray | None) -> IdArray:
        if ids is None:
            return self._popularity_order
        if len(ids) * 16 > self._count:
            # Filtering the precomputed order is linear; sorting the subset would not be.
            selected = np.zeros(self._count, dtype=np.bool_)
            selected[ids] = True
            return self._popularity_order[selected[self._popularity_order]]
        return ids[np.argsort(self._popularity_position[ids])]

    def _by_score(self, ids: IdArray, sort: tuple[SortPriority, ...], needed: int) -> IdArray:
        score = self._scores(ids, sort)
        key = -score  # exact, so "descending score" is "ascending key" with identical ties
        if len(ids) > 4 * needed and len(ids) > 4096:
            # Only the first page(s) are needed: keep every record scoring at least the
            # needed-th best score (all ties at the cut included), then order those exactly.
            cut = np.partition(key, needed - 1)[needed - 1]
            keep = key <= cut
            ids, key = ids[keep], key[keep]
        order: IdArray = np.lexsort((ids, self._collation[ids], key))
        return ids[order]

    def _scores(self, ids: IdArray, sort: tuple[SortPriority, ...]) -> FloatArray:
        """Weighted scores in the original float operation order (bit-identical results)."""
        score: FloatArray = np.zeros(len(ids), dtype=np.float64)
        stats: dict[str, tuple[FloatArray, float, float]] = {}
        for index, priority in enumerate(sort):
            if priority.key not in stats:
                values = self._numbers[priority.key][ids]
                if priority.key == "aired_date":
                    parsed = ~np.isnan(values)
                    if not parsed.any():
                        # Every date counts as the minimum, so the spread is zero and the
                        # priority is skipped. (The original server turned every score into NaN
                        # here and silently dropped all the other priorities too.)
                        stats[priority.key] = (values, 0.0, 0.0)
                        continue
                    low, high = float(values[parsed].min()), float(values[parsed].max())
                    # Unparseable dates, and the epoch itself (JavaScript's `|| min`), count as
                    # the minimum.
                    values = np.where(parsed & (values != 0), values, low)
                else:
                    low, high = float(values.min()), float(values.max())
                stats[priority.key] = (values, low, high)
            values, low, high = stats[priority.key]
            spread = high - low
            if spread == 0:
                continue
            normalized = (values - low) / spread
            if priority.key == "popularity_rank":  # lower is better
                normalized = 1.0 - normalized
            if priority.order == "asc":
                normalized = 1.0 - normalized
            score += normalized * float(len(sort) - index)
        return score
