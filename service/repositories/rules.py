"""Queries on the merchandising rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Rule, utcnow


def list_rules(session: Session, enabled_only: bool = False) -> Sequence[Rule]:
    stmt = select(Rule).order_by(Rule.id)
    if enabled_only:
        stmt = stmt.where(Rule.enabled.is_(True))
    return session.scalars(stmt).all()


def get_rule(session: Session, rule_id: int) -> Rule | None:
    return session.get(Rule, rule_id)


def add_rule(session: Session, values: dict[str, Any]) -> Rule:
    now = utcnow()
    rule = Rule(**values, created_at=now, updated_at=now)
    session.add(rule)
    session.flush()
    return rule


def update_rule(session: Session, rule: Rule, values: dict[str, Any]) -> Rule:
    for key, value in values.items():
        setattr(rule, key, value)
    rule.updated_at = utcnow()
    session.flush()
    return rule


def delete_rule(session: Session, rule: Rule) -> None:
    session.delete(rule)
