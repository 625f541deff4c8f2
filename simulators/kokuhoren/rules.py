"""The 国保連 simulator's intake rules (pure): what it accepts from a 連絡票 file.

The codec (:func:`~chukan.codecs.kokuhoren.decode_records`) has already
checked the layout and kept the good records. On top of it 国保連 checks:

File (a defect rejects the whole file):

* the control record is readable and the file structure sound (errors of
  record 1 or of no record);
* ``insurer_mismatch``: the 保険者番号 is the authenticated sender's;
* ``csv_file_name``: the file name matches データ種別, 保険者番号, 処理対象年月.

Each record (a defect rejects that record only):

* ``certificate_insurer_mismatch``: 証記載保険者番号 is the sender's;
* ``insured_number_invalid``: 被保険者番号 is not all zeros;
* ``change_date_after_month``: 異動年月日 (and 訂正年月日) not after 処理対象年月;
* ``birth_date_inconsistent``: 生年月日 before 資格取得年月日 and 異動年月日;
* ``care_level_required``: 要介護状態区分 given for 異動事由 03/04/05 (認定);
* ``disqualification_date_required``: 資格喪失年月日 given for 異動事由 02;
* ``certification_period_too_long``: 認定有効期間 at most 48 months;
* ``duplicate_record``: one record per 被保険者番号 and 異動年月日 in a month
  (this file and earlier files of the same データ種別 and month);
* register: 新規 (1) only for someone not currently registered
  (``recipient_already_registered``), 変更/終了 (2/3) only for a registered
  recipient (``recipient_unknown``), a 訂正連絡票 only for an accepted 異動
  with the same 被保険者番号 and 異動年月日 (``correction_target_unknown``).

Messages never quote a value from the file.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field
from typing import Final

from chukan.codecs.errors import CsvFileNameError
from chukan.codecs.kokuhoren import (
    ChangeKind,
    ChangeReason,
    ControlRecord,
    CorrectionKind,
    DataRecord,
    DecodeResult,
    NumberedRecord,
    RecipientCorrection,
    RecordError,
    YearMonth,
    check_file_name,
)

MAX_CERTIFICATION_MONTHS: Final = 48
CERTIFICATION_REASONS: Final = frozenset(
    {
        ChangeReason.CERTIFICATION_NEW,
        ChangeReason.CERTIFICATION_RENEWAL,
        ChangeReason.CERTIFICATION_LEVEL_CHANGE,
    }
)


@dataclass
class Register:
    """What 国保連 knows of one 保険者's recipients, as far as one file needs it.

    ``changes`` maps 被保険者番号 → 異動年月日 → 異動区分 of accepted, not deleted
    異動 records; ``month_keys`` holds (被保険者番号, 異動年月日) already accepted in
    the file's データ種別 and 処理対象年月. :func:`review_file` updates both as it
    accepts records, so later records of the same file see earlier ones.
    """

    changes: dict[str, dict[dt.date, ChangeKind]] = field(default_factory=dict)
    month_keys: set[tuple[str, dt.date]] = field(default_factory=set)

    def is_active(self, insured_number: str) -> bool:
        history = self.changes.get(insured_number)
        if not history:
            return False
        return history[max(history)] is not ChangeKind.END


@dataclass(frozen=True, slots=True)
class Review:
    """The outcome of one file: status, accepted records and every error."""

    status: str
    record_count: int
    accepted: tuple[NumberedRecord[DataRecord], ...]
    errors: tuple[RecordError, ...]

    @property
    def rejected(self) -> int:
        return self.record_count - len(self.accepted)


def month_end(month: YearMonth) -> dt.date:
    return dt.date(month.year, month.month, calendar.monthrange(month.year, month.month)[1])


def _add_months(day: dt.date, months: int) -> dt.date:
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _error(number: int, item: str, code: str, message: str) -> RecordError:
    return RecordError(number, item, code, message)


def record_problems(
    number: int, record: DataRecord, control: ControlRecord, sender: str
) -> list[RecordError]:
    """Rules of one record on its own (no register needed)."""
    change = record.change if isinstance(record, RecipientCorrection) else record
    last_day = month_end(control.processing_month)
    problems: list[RecordError] = []
    if change.certificate_insurer_number != sender:
        problems.append(
            _error(
                number,
                "証記載保険者番号",
                "certificate_insurer_mismatch",
                "証記載保険者番号 is not the sender's 保険者番号",
            )
        )
    if set(change.insured_number) == {"0"}:
        problems.append(
            _error(number, "被保険者番号", "insured_number_invalid", "被保険者番号 is all zeros")
        )
    if change.changed_on > last_day:
        problems.append(
            _error(
                number, "異動年月日", "change_date_after_month", "異動年月日 is after 処理対象年月"
            )
        )
    if isinstance(record, RecipientCorrection) and record.corrected_on > last_day:
        problems.append(
            _error(
                number, "訂正年月日", "change_date_after_month", "訂正年月日 is after 処理対象年月"
            )
        )
    if change.birth_date > change.qualified_on or change.birth_date > change.changed_on:
        problems.append(
            _error(
                number,
                "生年月日",
                "birth_date_inconsistent",
                "生年月日 is after 資格取得年月日 or 異動年月日",
            )
        )
    if change.change_reason in CERTIFICATION_REASONS and change.care_level is None:
        problems.append(
            _error(
                number,
                "要介護状態区分コード",
                "care_level_required",
                "要介護状態区分コード is required for a 認定 異動事由",
            )
        )
    if change.change_reason is ChangeReason.QUALIFICATION_LOST and change.disqualified_on is None:
        problems.append(
            _error(
                number,
                "資格喪失年月日",
                "disqualification_date_required",
                "資格喪失年月日 is required for 異動事由 資格喪失",
            )
        )
    start, end = change.certification_start, change.certification_end
    if (
        start is not None
        and end is not None
        and end >= _add_months(start, MAX_CERTIFICATION_MONTHS)
    ):
        problems.append(
            _error(
                number,
                "認定有効期間終了年月日",
                "certification_period_too_long",
                f"認定有効期間 is longer than {MAX_CERTIFICATION_MONTHS} months",
            )
        )
    return problems


def _register_problem(number: int, record: DataRecord, register: Register) -> RecordError | None:
    if isinstance(record, RecipientCorrection):
        target = record.change
        if target.changed_on not in register.changes.get(target.insured_number, {}):
            return _error(
                number,
                "異動年月日",
                "correction_target_unknown",
                "no accepted 異動 record has this 被保険者番号 and 異動年月日",
            )
        return None
    active = register.is_active(record.insured_number)
    if record.change_kind is ChangeKind.NEW and active:
        return _error(
            number,
            "被保険者番号",
            "recipient_already_registered",
            "a 新規 異動 for a recipient who is already registered",
        )
    if record.change_kind is not ChangeKind.NEW and not active:
        return _error(
            number,
            "被保険者番号",
            "recipient_unknown",
            "a 変更 or 終了 異動 for a recipient who is not registered",
        )
    return None


def _apply(record: DataRecord, register: Register) -> None:
    change = record.change if isinstance(record, RecipientCorrection) else record
    history = register.changes.setdefault(change.insured_number, {})
    if isinstance(record, RecipientCorrection) and record.correction_kind is CorrectionKind.DELETE:
        history.pop(change.changed_on, None)
    else:
        history[change.changed_on] = change.change_kind


def _file_errors(
    result: DecodeResult, sender: str, file_name: str
) -> tuple[ControlRecord | None, list[RecordError]]:
    errors = [e for e in result.errors if e.record_number is None or e.record_number == 1]
    control = result.control
    if control is None:
        return None, errors
    if control.insurer_number != sender:
        errors.append(_error(1, "保険者番号", "insurer_mismatch", "保険者番号 is not the sender's"))
    try:
        check_file_name(file_name, control)
    except CsvFileNameError as exc:
        errors.append(RecordError(None, None, exc.code, exc.message))
    return control, errors


def review_file(result: DecodeResult, *, sender: str, file_name: str, register: Register) -> Review:
    """Accept the good records of a decoded file, refuse the rest, update ``register``."""
    control, file_errors = _file_errors(result, sender, file_name)
    record_count = control.record_count if control is not None else 0
    if control is None or file_errors:
        everything = tuple(sorted({*result.errors, *file_errors}, key=_order))
        return Review("rejected", record_count, (), everything)
    errors = list(result.errors)
    accepted: list[NumberedRecord[DataRecord]] = []
    for item in result.records:
        number, record = item.record_number, item.record
        problems = record_problems(number, record, control, sender)
        change = record.change if isinstance(record, RecipientCorrection) else record
        key = (change.insured_number, change.changed_on)
        if not problems and key in register.month_keys:
            problems.append(
                _error(
                    number,
                    "異動年月日",
                    "duplicate_record",
                    "this 被保険者番号 already has a record with this 異動年月日 in the month",
                )
            )
        if not problems:
            problem = _register_problem(number, record, register)
            if problem is not None:
                problems.append(problem)
        if problems:
            errors.extend(problems)
            continue
        register.month_keys.add(key)
        _apply(record, register)
        accepted.append(item)
    rejected = record_count - len(accepted)
    status = "accepted" if rejected == 0 else "rejected" if not accepted else "partially_accepted"
    return Review(status, record_count, tuple(accepted), tuple(sorted(errors, key=_order)))


def _order(error: RecordError) -> tuple[int, str, str]:
    return (error.record_number or 0, error.field or "", error.code)


def is_correction(record: DataRecord) -> bool:
    return isinstance(record, RecipientCorrection)


def key_of(record: DataRecord) -> tuple[str, dt.date]:
    """(被保険者番号, 異動年月日) of a record or of the record a correction targets."""
    change = record.change if isinstance(record, RecipientCorrection) else record
    return change.insured_number, change.changed_on


__all__ = [
    "CERTIFICATION_REASONS",
    "MAX_CERTIFICATION_MONTHS",
    "Register",
    "Review",
    "is_correction",
    "key_of",
    "month_end",
    "record_problems",
    "review_file",
]
