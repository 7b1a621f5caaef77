"""Merchandising rules: stored in the database, applied by every API process.

A `RuleBook` is an immutable snapshot of the enabled rules, indexed for a search's lookups.
Each API process holds one and reloads it every `rules_refresh_s` seconds (and at once after
an edit made through this process), so an edit reaches every replica within that delay
without a database round trip per search.

How the rules act on a search (they override the model):
* synonym — the normalised query contains one term of the group (whole words): the other terms
  are appended to the text the *lexical* arm searches. The dense arm already places synonyms
  near each other; the lexical arm cannot know them.
* hide — the products are excluded inside retrieval (like a filter), so k results still come.
* pin — the products are placed first, in the rule's order, when they exist in the index and
  pass the request's filters; the ranked results follow without them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from service.db.engine import session_scope
from service.db.models import Rule
from service.domain import RuleKind
from service.errors import NotFound
from service.normalize import normalize_query
from service.repositories.rules import add_rule, delete_rule, get_rule, list_rules, update_rule
from service.schemas.rules import RuleIn, RuleOut

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Applied:
    """What the rules do to one search."""

    lexical_additions: tuple[str, ...] = ()
    hide: frozenset[str] = frozenset()
    pin: tuple[str, ...] = ()
    fired: tuple[tuple[int, RuleKind], ...] = ()


@dataclass(frozen=True)
class RuleBook:
    synonyms: tuple[tuple[int, tuple[str, ...], tuple[re.Pattern[str], ...]], ...] = ()
    by_query: dict[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> RuleBook:
        synonyms = []
        by_query: dict[str, list[Rule]] = {}
        for rule in rules:
            if rule.kind == RuleKind.synonym:
                terms = tuple(dict.fromkeys(normalize_query(t) for t in rule.terms))
                patterns = tuple(re.compile(rf"(?<!\w){re.escape(t)}(?!\w)") for t in terms)
                synonyms.append((rule.id, terms, patterns))
            elif rule.query:
                by_query.setdefault(rule.query, []).append(rule)
        return cls(tuple(synonyms), {q: tuple(rs) for q, rs in by_query.items()})

    def apply(self, normalized_query: str) -> Applied:
        additions: list[str] = []
        hide: set[str] = set()
        pin: list[str] = []
        fired: list[tuple[int, RuleKind]] = []
        for rule_id, terms, patterns in self.synonyms:
            present = [
                t for t, p in zip(terms, patterns, strict=True) if p.search(normalized_query)
            ]
            if present:
                additions.extend(t for t in terms if t not in present and t not in additions)
                fired.append((rule_id, RuleKind.synonym))
        for rule in self.by_query.get(normalized_query, ()):
            if rule.kind == RuleKind.hide:
                hide.update(rule.product_ids)
            else:
                pin.extend(p for p in rule.product_ids if p not in pin)
            fired.append((rule.id, rule.kind))
        return Applied(
            tuple(additions), frozenset(hide), tuple(p for p in pin if p not in hide), tuple(fired)
        )


class RuleCache:
    """This process's current `RuleBook`; `reload` is what its background loop calls."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.book = RuleBook()

    def reload(self) -> None:
        with session_scope(self.database_url) as session:
            rules = list_rules(session, enabled_only=True)
            session.expunge_all()
        self.book = RuleBook.of(rules)


# ------------------------------------------------------------------ admin use cases


def _values(body: RuleIn) -> dict:
    values = {"query": None, "terms": [], "product_ids": [], **body.model_dump()}
    if values["query"] is not None:
        values["query"] = normalize_query(values["query"])
    return values


def rules_list(database_url: str) -> list[RuleOut]:
    with session_scope(database_url) as session:
        return [RuleOut.model_validate(r) for r in list_rules(session)]


def rule_create(database_url: str, body: RuleIn) -> RuleOut:
    with session_scope(database_url) as session:
        return RuleOut.model_validate(add_rule(session, _values(body)))


def rule_update(database_url: str, rule_id: int, body: RuleIn) -> RuleOut:
    with session_scope(database_url) as session:
        rule = get_rule(session, rule_id)
        if rule is None:
            raise NotFound(f"no rule {rule_id}")
        return RuleOut.model_validate(update_rule(session, rule, _values(body)))


def rule_delete(database_url: str, rule_id: int) -> None:
    with session_scope(database_url) as session:
        rule = get_rule(session, rule_id)
        if rule is None:
            raise NotFound(f"no rule {rule_id}")
        delete_rule(session, rule)
