"""JSON forms of 受給者異動連絡票 / 訂正連絡票 records (pure).

The internal API takes recipient changes as JSON objects whose keys are the
attribute names of :class:`~chukan.codecs.kokuhoren.RecipientChange` (plus
``corrected_on`` and ``correction_kind`` for corrections). Dates are ISO
``YYYY-MM-DD``, code fields take the wire codes of the code lists (``"1"``,
``"03"``, ``"21"``…), ``special_address`` is a boolean, ``benefit_limit`` an
integer and optional values may be ``null`` or left out. Each record is then
checked by the 国保連 codec's own rules (:func:`encode_record`), so what is
accepted here can always be written to a file. Problems name the JSON field,
the 国保連 item and a stable code, never the value.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final

from chukan.codecs.errors import KokuhorenCsvError
from chukan.codecs.kokuhoren import (
    CHANGE_COLUMNS,
    CORRECTION_COLUMNS,
    BurdenRatio,
    CareLevel,
    ChangeKind,
    ChangeReason,
    CorrectionKind,
    DataRecord,
    RecipientChange,
    RecipientCorrection,
    Sex,
    encode_record,
)
from chukan.gateway.kokuhoren.errors import FieldProblem, RecordInvalidError

KINDS: Final = ("change", "correction")
_ISO_DATE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: Keys of the API that are not record fields.
ENVELOPE_KEYS: Final = frozenset({"change_id", "kind"})


Parser = Callable[[Any], Any]


def _date(value: Any) -> dt.date:
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("must be a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a real date") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _code(codes: type[Enum]) -> Parser:
    def parse(value: Any) -> Enum:
        if not isinstance(value, str):
            raise ValueError("must be a code string")
        try:
            return codes(value)
        except ValueError:
            raise ValueError("is not in the code list") from None

    return parse


#: attribute → (parser, required)
CHANGE_FIELDS: Final[dict[str, tuple[Parser, bool]]] = {
    "changed_on": (_date, True),
    "change_kind": (_code(ChangeKind), True),
    "change_reason": (_code(ChangeReason), True),
    "certificate_insurer_number": (_text, False),  # defaults to the tenant's 保険者番号
    "insured_number": (_text, True),
    "name_kana": (_text, True),
    "name": (_text, False),
    "birth_date": (_date, True),
    "sex": (_code(Sex), True),
    "qualified_on": (_date, True),
    "disqualified_on": (_date, False),
    "care_level": (_code(CareLevel), False),
    "certification_start": (_date, False),
    "certification_end": (_date, False),
    "benefit_limit": (_integer, False),
    "limit_start": (_date, False),
    "limit_end": (_date, False),
    "burden_ratio": (_code(BurdenRatio), True),
    "special_address": (_boolean, True),
    "facility_insurer_number": (_text, False),
}
CORRECTION_FIELDS: Final[dict[str, tuple[Parser, bool]]] = {
    "corrected_on": (_date, True),
    "correction_kind": (_code(CorrectionKind), True),
}
_ITEMS: Final = {c.attr: c.name for c in CORRECTION_COLUMNS if c.attr is not None}
_ATTRS: Final = {c.name: c.attr for c in (*CHANGE_COLUMNS, *CORRECTION_COLUMNS) if c.attr}


def record_from_json(data: Mapping[str, Any], *, default_insurer: str | None) -> DataRecord:
    """The record in ``data`` (``kind`` "change" or "correction"), checked by the codec.

    Raises :class:`RecordInvalidError` listing every problem of shape and type,
    or the first rule of the 国保連 layout the record breaks.
    """
    kind = data.get("kind", "change")
    if kind not in KINDS:
        raise RecordInvalidError(
            [FieldProblem("kind", "field_invalid", "must be one of " + ", ".join(KINDS))]
        )
    fields = CHANGE_FIELDS if kind == "change" else {**CHANGE_FIELDS, **CORRECTION_FIELDS}
    problems = [
        FieldProblem(key, "field_unknown", "is not a field of a recipient change")
        for key in data
        if key not in fields and key not in ENVELOPE_KEYS
    ]
    values: dict[str, Any] = {}
    for name, (parse, required) in fields.items():
        raw = data.get(name)
        if raw is None:
            if required:
                problems.append(
                    FieldProblem(name, "field_missing", "is required", _ITEMS.get(name))
                )
            values[name] = None
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            problems.append(FieldProblem(name, "field_invalid", str(exc), _ITEMS.get(name)))
    if values.get("certificate_insurer_number") is None:
        values["certificate_insurer_number"] = default_insurer
    if problems:
        raise RecordInvalidError(problems)
    tail = {name: values.pop(name) for name in CORRECTION_FIELDS if name in values}
    change = RecipientChange(**values)
    record: DataRecord = RecipientCorrection(change, **tail) if tail else change
    problem = check_record(record)
    if problem is not None:
        raise RecordInvalidError([problem])
    return record


def check_record(record: DataRecord) -> FieldProblem | None:
    """The first rule of the 国保連 layout that ``record`` breaks, or ``None``."""
    try:
        encode_record(record, 2)
    except KokuhorenCsvError as exc:
        return problem_of(exc)
    return None


def problem_of(error: KokuhorenCsvError) -> FieldProblem:
    """A codec error as a field problem: JSON field, 国保連 item and the codec's code."""
    field = _ATTRS.get(error.field) if error.field is not None else None
    return FieldProblem(field, error.code, error.message, error.field)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def record_to_json(record: DataRecord) -> dict[str, Any]:
    """The JSON form of a record; :func:`record_from_json` reads it back unchanged."""
    change = record.change if isinstance(record, RecipientCorrection) else record
    data: dict[str, Any] = {
        "kind": "correction" if isinstance(record, RecipientCorrection) else "change"
    }
    data.update({name: _plain(getattr(change, name)) for name in CHANGE_FIELDS})
    if isinstance(record, RecipientCorrection):
        data.update({name: _plain(getattr(record, name)) for name in CORRECTION_FIELDS})
    return data


def canonical_json(data: Mapping[str, Any]) -> str:
    """Stable text of a JSON form (sorted keys) for digests and storage."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def effective_date(record: DataRecord) -> dt.date:
    """The date that decides a record's month: 訂正年月日, else 異動年月日."""
    if isinstance(record, RecipientCorrection):
        return record.corrected_on
    return record.changed_on
