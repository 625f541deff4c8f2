"""Offices (所属) and item classes: which office a staff member works in, and which
items (資格, 受給・認定, 給付, 賦課・収滞納) their roles reach.

Chiba City's 介護保険 work is split between 介護保険管理課, the 高齢障害支援課 of the six
wards' 保健福祉センター and, for 賦課・収滞納, 財政局税務部債権管理課.  Each office may
limit the item classes its staff see (債権管理課: 賦課・収滞納 only); an account may
narrow its office's classes further.  The scope applies wherever staff read items,
held provisions or records (副本, the review queue, record search, disclosure).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import asyncpg

from chukan.codecs import catalog
from chukan.gateway.core import db
from chukan.gateway.core.errors import ValidationError
from chukan.gateway.staff.errors import OfficeExistsError, OfficeUnknownError

#: Item classes, in the order of the assessment's 別添2 (資格, 受給・認定・給付, 賦課・収滞納).
QUALIFICATION: Final = "qualification"
CERTIFICATION: Final = "certification"
BENEFIT: Final = "benefit"
LEVY: Final = "levy"
ITEM_CLASSES: Final = (QUALIFICATION, CERTIFICATION, BENEFIT, LEVY)
ITEM_CLASS_LABELS: Final[Mapping[str, str]] = {
    QUALIFICATION: "資格",
    CERTIFICATION: "受給・認定",
    BENEFIT: "給付",
    LEVY: "賦課・収滞納",
}

#: Every 特定個人情報名 of the catalog → its class.  A code missing here is in no class:
#: only staff whose scope is unlimited see it.
ITEM_CLASS_OF: Final[Mapping[str, str]] = {
    catalog.INSURED_QUALIFICATION.code: QUALIFICATION,  # 0101 被保険者資格
    catalog.ADDRESS_EXCEPTION.code: QUALIFICATION,  # 0102 住所地特例
    catalog.CERTIFICATION.code: CERTIFICATION,  # 0201 受給者・要介護認定
    catalog.BURDEN_RATIO.code: CERTIFICATION,  # 0202 負担割合 (受給者証の記載事項)
    catalog.BENEFIT.code: BENEFIT,  # 0300 給付
    catalog.COMPREHENSIVE_PROGRAM.code: CERTIFICATION,  # 0400 総合事業 (事業対象者 as 受給者)
    catalog.PREMIUM_BASIS.code: LEVY,  # 0500 保険料賦課
    catalog.LOCAL_TAX_INCOME.code: LEVY,  # 2001 所得・課税 (賦課の根拠)
}

OFFICE_CODE_PATTERN: Final = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
MAX_OFFICE_NAME: Final = 100
CENTRAL_OFFICE: Final = "kaigo-hoken-kanri"
#: The offices every tenant starts with (code, name, central, item classes or None = all).
DEFAULT_OFFICES: Final[tuple[tuple[str, str, bool, tuple[str, ...] | None], ...]] = (
    (CENTRAL_OFFICE, "保健福祉局高齢障害部介護保険管理課", True, None),
    ("chuo", "中央保健福祉センター高齢障害支援課", False, None),
    ("hanamigawa", "花見川保健福祉センター高齢障害支援課", False, None),
    ("inage", "稲毛保健福祉センター高齢障害支援課", False, None),
    ("wakaba", "若葉保健福祉センター高齢障害支援課", False, None),
    ("midori", "緑保健福祉センター高齢障害支援課", False, None),
    ("mihama", "美浜保健福祉センター高齢障害支援課", False, None),
    ("saiken-kanri", "財政局税務部債権管理課", False, (LEVY,)),
)

OFFICE_COLUMNS: Final = "code, name, central, item_classes, created_at, updated_at, updated_by"


def item_class(item_code: str) -> str | None:
    """The class of an item code, None for a code of no class."""
    return ITEM_CLASS_OF.get(item_code)


def effective_classes(
    office_classes: Iterable[str] | None, account_classes: Iterable[str] | None
) -> frozenset[str] | None:
    """What an account reaches: its office's classes narrowed by its own (None = all)."""
    scope: frozenset[str] | None = None
    for limit in (office_classes, account_classes):
        if limit is not None:
            scope = frozenset(limit) if scope is None else scope & frozenset(limit)
    return scope


def visible(scope: frozenset[str] | None, item_code: str) -> bool:
    """Whether staff with ``scope`` may see an item of ``item_code``."""
    return scope is None or item_class(item_code) in scope


def visible_codes(scope: frozenset[str] | None) -> list[str] | None:
    """The item codes ``scope`` reaches, for a SQL filter (None = no filter)."""
    if scope is None:
        return None
    return sorted(code for code, cls in ITEM_CLASS_OF.items() if cls in scope)


def parse_item_classes(value: Any, *, field: str = "item_classes") -> list[str] | None:
    """``null`` (no limit) or a non-empty list of known item classes."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v in ITEM_CLASSES for v in value)
    ):
        raise ValidationError(
            f"{field} must be null or a non-empty list of {', '.join(ITEM_CLASSES)}"
        )
    return sorted(set(value))


def check_office_code(value: Any) -> str:
    if not isinstance(value, str) or not OFFICE_CODE_PATTERN.match(value):
        raise ValidationError("office must be 2-32 of a-z 0-9 - starting with a letter")
    return value


def check_office_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_OFFICE_NAME:
        raise ValidationError(f"name must be 1 to {MAX_OFFICE_NAME} characters")
    return value.strip()


def office_json(row: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in OFFICE_COLUMNS.split(", "):
        value = row[key]
        out[key] = value.isoformat() if isinstance(value, dt.datetime) else value
    out["item_classes"] = sorted(row["item_classes"]) if row["item_classes"] is not None else None
    return out


async def ensure_offices(conn: db.Executor) -> None:
    """Seed the tenant's default offices (an administrator's edits stay: DO NOTHING)."""
    values = ", ".join(
        f"(${4 * i + 1}, ${4 * i + 2}, ${4 * i + 3}::boolean, ${4 * i + 4}::text[])"
        for i in range(len(DEFAULT_OFFICES))
    )
    args: list[Any] = []
    for code, name, central, classes in DEFAULT_OFFICES:
        args += [code, name, central, list(classes) if classes is not None else None]
    await conn.execute(
        f"INSERT INTO offices (code, name, central, item_classes) VALUES {values} "  # noqa: S608
        "ON CONFLICT DO NOTHING",
        *args,
    )


async def all_offices(conn: db.Executor) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(f"SELECT {OFFICE_COLUMNS} FROM offices ORDER BY NOT central, code")  # noqa: S608
    )


async def find_office(conn: db.Executor, code: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {OFFICE_COLUMNS} FROM offices WHERE code = $1",  # noqa: S608
        code,
    )


async def require_office(conn: db.Executor, code: str) -> asyncpg.Record:
    row = await find_office(conn, check_office_code(code))
    if row is None:
        raise OfficeUnknownError(f"no office {code}")
    return row


async def create_office(
    conn: db.Executor, *, code: str, name: str, item_classes: list[str] | None, by: str
) -> asyncpg.Record:
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO offices (code, name, item_classes, updated_by)
                VALUES ($1, $2, $3, $4) RETURNING {OFFICE_COLUMNS}""",  # noqa: S608
            code,
            name,
            item_classes,
            by,
        )
    except asyncpg.UniqueViolationError:
        raise OfficeExistsError(f"office {code} already exists") from None
    assert row is not None
    return row


async def update_office(
    conn: db.Executor, code: str, data: Mapping[str, Any], by: str
) -> asyncpg.Record:
    """Rename an office or change its item classes (``central`` is fixed)."""
    unknown = set(data) - {"name", "item_classes"}
    if unknown or not data:
        raise ValidationError("fields that can change: item_classes, name")
    name = check_office_name(data["name"]) if "name" in data else None
    classes = parse_item_classes(data.get("item_classes"))
    row = await conn.fetchrow(
        f"""UPDATE offices SET name = coalesce($2, name),
                item_classes = CASE WHEN $3 THEN $4::text[] ELSE item_classes END,
                updated_at = now(), updated_by = $5
            WHERE code = $1 RETURNING {OFFICE_COLUMNS}""",  # noqa: S608
        code,
        name,
        "item_classes" in data,
        classes,
        by,
    )
    if row is None:
        raise OfficeUnknownError(f"no office {code}")
    return row
