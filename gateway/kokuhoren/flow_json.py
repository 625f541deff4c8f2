"""JSON forms of the 給付管理票, 償還払い実績 and 特別徴収依頼 records (pure).

The internal API takes each record as a JSON object whose keys are the attribute
names of its dataclass in :mod:`chukan.codecs.kokuhoren_flows` (a 給付管理票's
``lines`` a list of objects). Dates are ``YYYY-MM-DD``, months ``YYYYMM``, code
fields take the wire codes (``"1"``, ``"21"``, ``"01"``…). Each record is then
written into a one-record file by the codec, so its rules (the same ones 国保連
applies) decide what is accepted; problems name the JSON field or the 国保連 item
and a stable code, never the value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

from chukan.codecs.errors import KokuhorenCsvError
from chukan.codecs.kokuhoren_fields import YearMonth
from chukan.codecs.kokuhoren_flows import (
    BENEFIT_PLAN,
    COLLECTION_REQUEST,
    REIMBURSEMENT,
    BenefitPlan,
    CollectionRequest,
    FlowControl,
    FlowSpec,
    Reimbursement,
    encode_flow_file,
)
from chukan.gateway.kokuhoren.errors import FieldProblem, RecordInvalidError

#: The flows a core system posts, by the name used in the API and the database.
OUTGOING: Final[dict[str, FlowSpec[Any]]] = {
    BENEFIT_PLAN.name: BENEFIT_PLAN,
    REIMBURSEMENT.name: REIMBURSEMENT,
    COLLECTION_REQUEST.name: COLLECTION_REQUEST,
}
_ISO_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONTH: Final = re.compile(r"[0-9]{6}")
#: Keys of the API that are not record fields.
ENVELOPE_KEYS: Final = frozenset({"record_id"})
MAX_LINES: Final = 98


def _problem(field: str, code: str, message: str) -> RecordInvalidError:
    """One field's problem as the error the API answers with (defined in the errors module)."""
    return RecordInvalidError([FieldProblem(field, code, message)])


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(inner[0], value, path)
    if value is None:
        raise _problem(path, "field_missing", "is required")
    if origin is tuple:
        (element, _) = typing.get_args(tp)
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LINES:
            raise _problem(path, "field_invalid", f"must be a list of 1 to {MAX_LINES} entries")
        return tuple(_convert(element, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is YearMonth:
        if not isinstance(value, str) or not _MONTH.fullmatch(value):
            raise _problem(path, "field_invalid", "must be a month YYYYMM")
        try:
            return YearMonth(int(value[:4]), int(value[4:]))
        except ValueError:
            raise _problem(path, "field_invalid", "is not a real month") from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise _problem(path, "field_invalid", "must be an object")
        return _build(tp, value, path + ".")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if not isinstance(value, str):
            raise _problem(path, "field_invalid", "must be a code string")
        try:
            return tp(value)
        except ValueError:
            raise _problem(path, "code_unknown", "is not in the code list") from None
    if tp is dt.date:
        if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
            raise _problem(path, "field_invalid", "must be a date YYYY-MM-DD")
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise _problem(path, "field_invalid", "is not a real date") from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**10:
            raise _problem(path, "field_invalid", "must be a non-negative integer")
        return value
    if tp is str:
        if not isinstance(value, str) or len(value) > 64:
            raise _problem(path, "field_invalid", "must be a string of at most 64 characters")
        return value
    raise _problem(path, "field_invalid", "has an unsupported type")  # pragma: no cover


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    problems: list[FieldProblem] = []
    unknown = set(data) - set(names) - (ENVELOPE_KEYS if not prefix else set())
    problems.extend(
        FieldProblem(prefix + key, "field_unknown", "is not a field of this record")
        for key in sorted(unknown)
    )
    values: dict[str, Any] = {}
    for name in names:
        try:
            values[name] = _convert(hints[name], data.get(name), prefix + name)
        except RecordInvalidError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RecordInvalidError(problems)
    return cls(**values)


def record_month(item: object) -> YearMonth:
    """The first 処理対象年月 whose file may carry ``item``.

    給付管理票: its 対象年月; 償還払い実績: the month of its 支給決定; 特別徴収依頼:
    its 特別徴収開始年月 (the 依頼 goes in the file of that month at the latest).
    """
    if isinstance(item, BenefitPlan):
        return item.target_month
    if isinstance(item, Reimbursement):
        return YearMonth.of(item.decided_on)
    assert isinstance(item, CollectionRequest)
    return item.start_month


def record_from_json(spec: FlowSpec[Any], data: Any, *, insurer: str) -> Any:
    """The record of ``spec`` in ``data``, checked by the codec as 国保連 would."""
    if not isinstance(data, Mapping):
        raise RecordInvalidError([FieldProblem(None, "field_invalid", "must be an object")])
    item = _build(spec.item_type, data)
    month = record_month(item)
    control = FlowControl(1, 0, insurer, month, "0000000001")
    try:
        encode_flow_file(spec, control, [item])
    except KokuhorenCsvError as exc:
        raise RecordInvalidError(
            [FieldProblem(None, exc.code, exc.message, item=exc.field)]
        ) from None
    return item


def _plain(value: Any) -> Any:
    if isinstance(value, YearMonth):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def record_to_json(item: object) -> dict[str, Any]:
    """The JSON object of a record (what :func:`record_from_json` reads back)."""
    plain = _plain(item)
    assert isinstance(plain, dict)
    return plain


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces: equal records give equal text (for digests)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
