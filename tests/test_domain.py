"""The value sets of `service.domain` and the database's CHECK constraints agree.

Migrations are frozen history and spell the values out; the enums are what code uses. A value
added to an enum without a migration would be refused by the database at run time (an event
acknowledged and then not stored), so the two are compared on the migrated schema itself.
"""

from __future__ import annotations

import re
from enum import StrEnum

import pytest
from sqlalchemy import inspect

from service.db.engine import get_engine
from service.domain import (
    AdapterStatus,
    ComparisonStatus,
    EventType,
    RewriteOrigin,
    RuleKind,
    RunStatus,
)

CHECKED = [
    ("events", "ck_event_type", EventType),
    ("adapters", "ck_adapter_status", AdapterStatus),
    ("training_runs", "ck_run_status", RunStatus),
    ("rewrites", "ck_rewrite_origin", RewriteOrigin),
    ("rules", "ck_rule_kind", RuleKind),
    ("comparisons", "ck_comparison_status", ComparisonStatus),
]


@pytest.mark.parametrize(("table", "name", "enum"), CHECKED, ids=[c[1] for c in CHECKED])
def test_check_constraints_allow_exactly_the_enum(
    db_url: str, table: str, name: str, enum: type[StrEnum]
) -> None:
    checks = {
        c["name"]: c["sqltext"] for c in inspect(get_engine(db_url)).get_check_constraints(table)
    }
    assert name in checks, f"{table} lost its {name} constraint: {sorted(checks)}"
    allowed = set(re.findall(r"'([^']*)'", str(checks[name])))
    assert allowed == {member.value for member in enum}
