"""Filterable and facetable fields of an index version, stored beside its two arms.

Notation (N rows of the version, the same numbering as both arms):
    brand            the product's brand (categorical)
    price            ``attributes["price"]``, a number in the catalogue's currency units
    <attribute>      every short text or yes/no attribute that enough products carry, named
                     without the Icecat type prefix (``attr_t_product_colour`` → ``product_colour``)
    codes[f]         (N,) int32: index into values[f] of row i's value of field f, -1 = none
    values[f]        the distinct values of f, each in its most common spelling

Decisions:
* Values match case-insensitively and exactly (``"black"`` matches ``"Black"``): shoppers'
  filter values come from the facet counts we return, so no stemming or partial matching.
* Within a field the wanted values are OR-ed, across fields AND-ed (every storefront's rule).
* An attribute becomes a field when at least ``MIN_SHARE`` of the rows carry it (and 2 rows),
  it has at most ``MAX_VALUES`` distinct values and its values are short: identifiers, free
  text and measurements make useless facets and bloat the table.
* Numbers other than price are not filterable yet; price is the range filter storefronts need.
* Default facets (a search that names none): brand, price and the most common fields whose
  values are mostly words — a field whose values mostly carry digits ("0 - 40 °C", "42 x 31
  cm") is filterable but makes a poor default facet.
* The table is a mask factory: retrieval restricts *both* arms to the allowed rows before
  ranking (service/retrieval/index.py), so a filter never cuts the top k afterwards.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FACETS_DIRNAME = "facets"
BRAND = "brand"
PRICE = "price"
MIN_SHARE = 0.01
MAX_VALUES = 500
MAX_VALUE_LENGTH = 64
DEFAULT_ATTRIBUTE_FACETS = 5  # facets answered when a search names none: brand, price, these
_PREFIXES = ("attr_t_", "attr_b_")
_NOT_FACETS = {"name", "ean", "img_500x500", "date_released", "product_locale", PRICE}


@dataclass(frozen=True)
class Filters:
    """What a search may return: the request's filters plus the products rules hide."""

    brand: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    exclude: frozenset[str] = frozenset()  # product ids (hide rules)

    def restricts(self) -> bool:
        return bool(
            self.brand
            or self.price_min is not None
            or self.price_max is not None
            or self.attributes
            or self.exclude
        )


def field_name(attribute: str) -> str:
    for prefix in _PREFIXES:
        if attribute.startswith(prefix):
            return attribute[len(prefix) :]
    return attribute


def _text_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and 0 < len(value.strip()) <= MAX_VALUE_LENGTH:
        return value.strip()
    return None


def _row_values(attrs: Mapping[str, Any]) -> dict[str, str]:
    """{field: value} of one row's facetable attributes (the first of two keys naming one
    field wins)."""
    out: dict[str, str] = {}
    for key, raw in attrs.items():
        name = field_name(key)
        if key in _NOT_FACETS or name in _NOT_FACETS or name == BRAND or name in out:
            continue
        value = _text_value(raw)
        if value is not None:
            out[name] = value
    return out


def _price(value: Any) -> float:
    if isinstance(value, bool):
        return np.nan
    try:
        price = float(value)
    except (TypeError, ValueError):
        return np.nan
    return price if np.isfinite(price) and price >= 0 else np.nan


@dataclass
class FacetTable:
    values: dict[str, list[str]]
    codes: dict[str, np.ndarray]
    price: np.ndarray
    # Categorical fields by how many rows carry them, most first (brand always first).
    order: list[str] = field(default_factory=list)
    wordy: list[str] = field(default_factory=list)  # of those, the ones fit to be default facets
    _lookup: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._lookup = {
            f: {v.casefold(): i for i, v in enumerate(vals)} for f, vals in self.values.items()
        }

    # ------------------------------------------------------------------ build and store

    @classmethod
    def build(
        cls, brands: Sequence[str | None], attributes: Sequence[Mapping[str, Any]]
    ) -> FacetTable:
        n = len(brands)
        columns: dict[str, list[str | None]] = {BRAND: [b.strip() if b else None for b in brands]}
        # Two passes: count first, then fill columns for the fields that qualify only. A
        # catalogue carries thousands of attribute names (Icecat: 5,359), so a column for each
        # would take names × rows memory (bench/scale.py).
        carried: Counter[str] = Counter()
        distinct: dict[str, set[str]] = defaultdict(set)
        for attrs in attributes:
            for name, value in _row_values(attrs).items():
                carried[name] += 1
                if len(distinct[name]) <= MAX_VALUES:
                    distinct[name].add(value.casefold())
        fields = [
            name
            for name in carried  # first-seen order, as before
            if carried[name] >= max(2, MIN_SHARE * n) and len(distinct[name]) <= MAX_VALUES
        ]
        for name in fields:
            columns[name] = [None] * n
        if fields:
            for i, attrs in enumerate(attributes):
                for name, value in _row_values(attrs).items():
                    if name in columns:
                        columns[name][i] = value
        values: dict[str, list[str]] = {}
        codes: dict[str, np.ndarray] = {}
        for name, col in columns.items():
            spellings: dict[str, Counter[str]] = defaultdict(Counter)
            for v in col:
                if v is not None:
                    spellings[v.casefold()][v] += 1
            keys = sorted(spellings)
            index = {k: i for i, k in enumerate(keys)}
            values[name] = [spellings[k].most_common(1)[0][0] for k in keys]
            codes[name] = np.array(
                [index[v.casefold()] if v is not None else -1 for v in col], dtype=np.int32
            )
        carried_by = {name: int((c >= 0).sum()) for name, c in codes.items()}
        order = [BRAND] + sorted(
            (f for f in codes if f != BRAND), key=lambda f: (-carried_by[f], f)
        )
        price = np.array([_price(a.get(PRICE)) for a in attributes], dtype=np.float32)
        wordy = [
            f
            for f in order
            if f != BRAND
            and 2 * sum(any(c.isdigit() for c in v) for v in values[f]) < len(values[f])
        ]
        return cls(values, codes, price, order, wordy)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"values": self.values, "order": self.order, "wordy": self.wordy}
        (directory / "fields.json").write_text(json.dumps(meta))
        np.savez(
            directory / "columns.npz",
            price=self.price,
            **{f"c_{k}": v for k, v in self.codes.items()},
        )

    @classmethod
    def load(cls, directory: Path) -> FacetTable:
        meta = json.loads((directory / "fields.json").read_text())
        with np.load(directory / "columns.npz") as z:
            codes = {name: z[f"c_{name}"] for name in meta["values"]}
            price = z["price"]
        return cls(meta["values"], codes, price, meta["order"], meta.get("wordy", []))

    # ------------------------------------------------------------------ queries

    @property
    def fields(self) -> list[str]:
        """Every filterable and facetable field: the categorical ones, then price."""
        return [*self.order, PRICE]

    def default_facets(self) -> list[str]:
        return [BRAND, PRICE, *self.wordy[:DEFAULT_ATTRIBUTE_FACETS]]

    def unknown(self, names: Iterable[str]) -> list[str]:
        """Of `names`, the fields this version does not have."""
        return sorted(set(names) - set(self.fields))

    def _codes_of(self, name: str, wanted: Iterable[str]) -> np.ndarray:
        lookup = self._lookup[name]
        return np.array([lookup[v.casefold()] for v in wanted if v.casefold() in lookup], np.int32)

    def mask(self, filters: Filters, row_of: Mapping[str, int]) -> np.ndarray | None:
        """(N,) bool: rows the filters admit; None when they restrict nothing. A field this
        version does not have admits nothing: no product carries a value of it."""
        if not filters.restricts():
            return None
        keep = np.ones(self.price.shape[0], dtype=bool)
        for name, wanted in ((BRAND, filters.brand), *filters.attributes):
            if name not in self.codes:
                keep[:] = False
            elif wanted:
                keep &= np.isin(self.codes[name], self._codes_of(name, wanted))
        if filters.price_min is not None:
            keep &= self.price >= filters.price_min  # NaN (no price) compares False
        if filters.price_max is not None:
            keep &= self.price <= filters.price_max
        for pid in filters.exclude:
            row = row_of.get(pid)
            if row is not None:
                keep[row] = False
        return keep

    def counts(
        self, rows: np.ndarray, names: Iterable[str], top: int = 10
    ) -> dict[str, list[tuple[str, int]]]:
        """Per categorical field: its `top` values among `rows` with their counts, most first."""
        out: dict[str, list[tuple[str, int]]] = {}
        for name in names:
            if name == PRICE:
                continue
            if name not in self.codes:
                out[name] = []
                continue
            codes = self.codes[name][rows]
            codes = codes[codes >= 0]
            if codes.size == 0:
                out[name] = []
                continue
            found, count = np.unique(codes, return_counts=True)
            order = np.lexsort((found, -count))[:top]
            out[name] = [(self.values[name][found[i]], int(count[i])) for i in order]
        return out

    def price_stats(self, rows: np.ndarray) -> tuple[float, float, int] | None:
        """(min, max, how many rows have a price) among `rows`; None when none has one."""
        prices = self.price[rows]
        prices = prices[~np.isnan(prices)]
        if prices.size == 0:
            return None
        # float32 columns: round back to the cents the catalogue gave
        return round(float(prices.min()), 2), round(float(prices.max()), 2), int(prices.size)

    def brand_of(self, row: int) -> str | None:
        code = int(self.codes[BRAND][row])
        return self.values[BRAND][code] if code >= 0 else None

    def price_of(self, row: int) -> float | None:
        price = float(self.price[row])
        return None if np.isnan(price) else round(price, 2)
