"""国保連 transmission files of 介護保険: 受給者異動連絡票 and 受給者訂正連絡票.

The gateway writes these files (DESIGN §3 flow 6) and the 国保連 simulator
reads them back, so both directions share one layout table per record kind:
the encoder runs the decoder's rules on its own output, and nothing is written
that 国保連 would refuse.

Wire rules (DESIGN §5)
----------------------
* Shift_JIS, written as CP932 so that NEC/IBM extension characters (髙, 﨑,
  ①) are carried; characters CP932 cannot encode, or folds onto another
  character (U+301C WAVE DASH), 外字 and control characters are refused.
* One record per line, every line ends with CRLF, no header row.
* Values are separated by commas and every value is enclosed in double
  quotes; a quote inside a value is doubled. Unquoted values and stray
  quotes are refused.
* One control record (レコード種別 1) first, then the data records (2), then
  one end record (3). レコード番号 counts the lines of the file from 1
  (the control record is 1, the end record is レコード件数 + 2).
* File name ``10_531{保険者番号}{YYYYMM}.csv`` (異動連絡票) or
  ``10_532{保険者番号}{YYYYMM}.csv`` (訂正連絡票), YYYYMM = 処理対象年月.

Control record (レコード種別 1, 12 values)
-----------------------------------------
| #  | 項目               | format                                   | required |
|----|--------------------|------------------------------------------|----------|
| 1  | レコード種別       | "1"                                      | yes      |
| 2  | レコード番号       | integer; 1 (first line of the file)      | yes      |
| 3  | ボリューム通番     | integer ≥ 1, 1-3 digits                  | yes      |
| 4  | レコード件数       | integer ≥ 1, 1-9 digits; = data records  | yes      |
| 5  | データ種別         | 531 異動 / 532 訂正                      | yes      |
| 6  | 福祉事務所特定番号 | 1-10 digits                              | no       |
| 7  | 保険者番号         | 6 digits, 01-47 first, 検証番号 last     | yes      |
| 8  | 事業所番号         | always empty in these files              | empty    |
| 9  | 都道府県番号       | 2 digits 01-47; = 保険者番号 digits 1-2  | yes      |
| 10 | 媒体区分           | 1 伝送 / 2 電子媒体 (emulator list)      | yes      |
| 11 | 処理対象年月       | YYYYMM, a real month                     | yes      |
| 12 | ファイル管理番号   | 1-10 digits                              | yes      |

Data record (レコード種別 2): 23 values for 5311, 25 for 5321
------------------------------------------------------------
| #  | 項目                             | format                                  | required |
|----|----------------------------------|-----------------------------------------|----------|
| 1  | レコード種別                     | "2"                                     | yes      |
| 2  | レコード番号                     | integer = position of the line          | yes      |
| 3  | 交換情報識別番号                 | 5311 (file 531) / 5321 (file 532)       | yes      |
| 4  | 異動年月日                       | YYYYMMDD, a real date                   | yes      |
| 5  | 異動区分コード                   | 1 新規 / 2 変更 / 3 終了                | yes      |
| 6  | 異動事由                         | 2 digits, ChangeReason (emulator list)  | yes      |
| 7  | 証記載保険者番号                 | 6 digits, 01-47 first, 検証番号 last    | yes      |
| 8  | 被保険者番号                     | 10 digits                               | yes      |
| 9  | 被保険者氏名カナ                 | 全角 or 半角 katakana, spaces, ・; ≤ 25 | yes      |
| 10 | 被保険者氏名 (漢字)              | CP932 text, ≤ 25 characters             | no       |
| 11 | 生年月日                         | YYYYMMDD                                | yes      |
| 12 | 性別コード                       | 1 男 / 2 女                             | yes      |
| 13 | 資格取得年月日                   | YYYYMMDD                                | yes      |
| 14 | 資格喪失年月日                   | YYYYMMDD, ≥ 資格取得年月日               | no       |
| 15 | 要介護状態区分コード             | 01 非該当, 12/13 要支援1-2, 21-25 要介護1-5 | no (a) |
| 16 | 認定有効期間開始年月日           | YYYYMMDD                                | (a)      |
| 17 | 認定有効期間終了年月日           | YYYYMMDD, ≥ start                       | (a)      |
| 18 | 居宅サービス等区分支給限度基準額 | integer, 1-6 digits (単位)              | (b)      |
| 19 | 限度額適用期間開始年月日         | YYYYMMDD                                | (b)      |
| 20 | 限度額適用期間終了年月日         | YYYYMMDD, ≥ start                       | (b)      |
| 21 | 利用者負担割合                   | 1 / 2 / 3 (割)                          | yes      |
| 22 | 住所地特例対象者区分             | 0 / 1                                   | yes      |
| 23 | 施設所在保険者番号               | 6 digits, 01-47 first, 検証番号 last    | (c)      |
| 24 | 訂正年月日 (5321 only)           | YYYYMMDD                                | yes      |
| 25 | 訂正区分コード (5321 only)       | 1 訂正 / 2 削除                         | yes      |

(a) empty 要介護状態区分 means 非認定. For 要支援/要介護 (12-25) both 認定有効期間
dates are required; for 非該当 (01) and 非認定 both are empty.
(b) 支給限度基準額 and both 限度額適用期間 dates are given together or not at all.
(c) required when 住所地特例対象者区分 is 1, empty when it is 0.

End record (レコード種別 3): レコード種別 "3", レコード番号.

Refinements of this emulator: 被保険者氏名 (漢字) is an added optional value;
the 異動事由 and 媒体区分 code lists are the emulator's own. The 検証番号
rule is the one of the 保険者番号設定要領, see
:func:`~chukan.codecs.kokuhoren_fields.insurer_check_digit`.

Strict :func:`decode_file` raises the first error; :func:`decode_records`
keeps going and returns the good data records with one :class:`RecordError`
per defect, for the 国保連 simulator's intake result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, Final, Generic, TypeAlias, TypeVar

from .errors import (
    CsvCharsetError,
    CsvCountMismatchError,
    CsvDataTypeError,
    CsvFieldCountError,
    CsvFieldError,
    CsvFileNameError,
    CsvLimitError,
    CsvLineEndError,
    CsvPeriodError,
    CsvRecordNumberError,
    CsvStructureError,
    CsvUnknownCodeError,
    KokuhorenCsvError,
    StopDecodingError,
)
from .item_model import CareLevel
from .kokuhoren_fields import (
    BurdenRatio,
    ChangeKind,
    ChangeReason,
    Code,
    Column,
    CorrectionKind,
    DataType,
    Date,
    Digits,
    Empty,
    ExchangeId,
    Fixed,
    Flag,
    InsurerNumber,
    Kana,
    Maybe,
    Medium,
    Month,
    Number,
    Prefecture,
    Sex,
    Text,
    YearMonth,
    column,
    insurer_check_digit,
    is_valid_insurer_number,
    join_values,
    split_values,
)

__all__ = [
    "CHANGE_COLUMNS",
    "CONTROL_COLUMNS",
    "CORRECTION_COLUMNS",
    "DEFAULT_LIMITS",
    "END_COLUMNS",
    "BurdenRatio",
    "CareLevel",
    "ChangeKind",
    "ChangeReason",
    "Collector",
    "ControlRecord",
    "CorrectionKind",
    "CsvLimits",
    "DataRecord",
    "DataType",
    "DecodeResult",
    "EndRecord",
    "ExchangeId",
    "FileName",
    "Medium",
    "NumberedRecord",
    "RecipientChange",
    "RecipientCorrection",
    "Record",
    "RecordError",
    "Sex",
    "TransmissionFile",
    "YearMonth",
    "check_file_name",
    "decode_file",
    "decode_record",
    "decode_records",
    "encode_file",
    "encode_record",
    "file_name",
    "insurer_check_digit",
    "is_valid_insurer_number",
    "line_values",
    "parse_file_name",
    "split_lines",
]

# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ControlRecord:
    """コントロールレコード: what the file carries, for whom, for which month.

    ``record_count`` (レコード件数) is kept because it is on the wire; build
    files with :meth:`TransmissionFile.build` to have it set for you.
    """

    volume_number: int  # ボリューム通番
    record_count: int  # レコード件数 (data records)
    data_type: DataType  # データ種別
    welfare_office_number: str | None  # 福祉事務所特定番号
    insurer_number: str  # 保険者番号
    prefecture_number: str  # 都道府県番号
    medium: Medium  # 媒体区分
    processing_month: YearMonth  # 処理対象年月
    file_management_number: str  # ファイル管理番号


@dataclass(frozen=True, slots=True)
class RecipientChange:
    """受給者異動連絡票情報 (交換情報識別番号 5311): one change of one recipient."""

    changed_on: date  # 異動年月日
    change_kind: ChangeKind  # 異動区分コード
    change_reason: ChangeReason  # 異動事由
    certificate_insurer_number: str  # 証記載保険者番号
    insured_number: str  # 被保険者番号
    name_kana: str  # 被保険者氏名カナ
    name: str | None  # 被保険者氏名 (漢字)
    birth_date: date  # 生年月日
    sex: Sex  # 性別コード
    qualified_on: date  # 資格取得年月日
    disqualified_on: date | None  # 資格喪失年月日
    care_level: CareLevel | None  # 要介護状態区分コード (None: 非認定)
    certification_start: date | None  # 認定有効期間開始年月日
    certification_end: date | None  # 認定有効期間終了年月日
    benefit_limit: int | None  # 居宅サービス等区分支給限度基準額 (単位)
    limit_start: date | None  # 限度額適用期間開始年月日
    limit_end: date | None  # 限度額適用期間終了年月日
    burden_ratio: BurdenRatio  # 利用者負担割合
    special_address: bool  # 住所地特例対象者区分
    facility_insurer_number: str | None  # 施設所在保険者番号


@dataclass(frozen=True, slots=True)
class RecipientCorrection:
    """受給者訂正連絡票情報 (5321): a corrected (or deleted) earlier 異動 record."""

    change: RecipientChange
    corrected_on: date  # 訂正年月日
    correction_kind: CorrectionKind  # 訂正区分コード


@dataclass(frozen=True, slots=True)
class EndRecord:
    """エンドレコード: closes the file; it carries only its レコード番号."""


DataRecord: TypeAlias = RecipientChange | RecipientCorrection
Record: TypeAlias = ControlRecord | RecipientChange | RecipientCorrection | EndRecord

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class NumberedRecord(Generic[R]):
    """A decoded record with the レコード番号 it had in its file."""

    record_number: int
    record: R


@dataclass(frozen=True, slots=True)
class TransmissionFile:
    """A whole 連絡票 file: control record, data records (the end record is implied)."""

    control: ControlRecord
    records: tuple[DataRecord, ...]

    @classmethod
    def build(cls, control: ControlRecord, records: Iterable[DataRecord]) -> TransmissionFile:
        """A file whose レコード件数 is set from ``records``."""
        items = tuple(records)
        return cls(replace(control, record_count=len(items)), items)

    @property
    def file_name(self) -> str:
        """The name 国保連 expects for this file."""
        return file_name(
            self.control.data_type, self.control.insurer_number, self.control.processing_month
        )


@dataclass(frozen=True, slots=True)
class RecordError:
    """One defect found by :func:`decode_records`, safe to show and to log.

    ``record_number`` is the line's position in the file (``None`` for defects
    of the whole file); ``field`` is the item name; ``code`` is the stable code
    of the matching :class:`KokuhorenCsvError` subclass. No values are quoted.
    """

    record_number: int | None
    field: str | None
    code: str
    message: str

    @classmethod
    def of(cls, error: KokuhorenCsvError) -> RecordError:
        """The record error describing ``error``."""
        return cls(error.record_number, error.field, error.code, error.message)


@dataclass(frozen=True, slots=True)
class DecodeResult:
    """What :func:`decode_records` could read: the good records and every defect.

    ``control`` is ``None`` when the control record itself is unreadable;
    ``records`` holds only data records without any defect of their own.
    """

    control: ControlRecord | None
    records: tuple[NumberedRecord[DataRecord], ...]
    errors: tuple[RecordError, ...]

    @property
    def ok(self) -> bool:
        """No defect at all: the file is what :func:`decode_file` accepts."""
        return not self.errors


@dataclass(frozen=True, slots=True)
class CsvLimits:
    """Bounds for one decode, so a hostile upload costs bounded work and memory."""

    max_bytes: int = 64 * 1024 * 1024
    max_line_bytes: int = 2048
    max_records: int = 200_000
    max_errors: int = 1000


DEFAULT_LIMITS: Final = CsvLimits()

# --------------------------------------------------------------------------- layouts

_RECORD_KIND: Final = "レコード種別"
_RECORD_NUMBER: Final = "レコード番号"
_EXCHANGE_ID: Final = "交換情報識別番号"
_RECORD_COUNT: Final = "レコード件数"
_NUMBER_CODEC: Final = Number(10, minimum=1)

CONTROL_COLUMNS: Final[tuple[Column, ...]] = (
    column(_RECORD_KIND, None, Fixed("1")),
    column(_RECORD_NUMBER, None, _NUMBER_CODEC),
    column("ボリューム通番", "volume_number", Number(3, minimum=1)),
    column(_RECORD_COUNT, "record_count", Number(9, minimum=1)),
    column("データ種別", "data_type", Code(DataType)),
    column("福祉事務所特定番号", "welfare_office_number", Maybe(Digits(1, 10))),
    column("保険者番号", "insurer_number", InsurerNumber()),
    column("事業所番号", None, Empty()),
    column("都道府県番号", "prefecture_number", Prefecture()),
    column("媒体区分", "medium", Code(Medium)),
    column("処理対象年月", "processing_month", Month()),
    column("ファイル管理番号", "file_management_number", Digits(1, 10)),
)

_CHANGE_BODY: Final[tuple[Column, ...]] = (
    column("異動年月日", "changed_on", Date()),
    column("異動区分コード", "change_kind", Code(ChangeKind)),
    column("異動事由", "change_reason", Code(ChangeReason)),
    column("証記載保険者番号", "certificate_insurer_number", InsurerNumber()),
    column("被保険者番号", "insured_number", Digits(10)),
    column("被保険者氏名カナ", "name_kana", Kana(25)),
    column("被保険者氏名", "name", Maybe(Text(25))),
    column("生年月日", "birth_date", Date()),
    column("性別コード", "sex", Code(Sex)),
    column("資格取得年月日", "qualified_on", Date()),
    column("資格喪失年月日", "disqualified_on", Maybe(Date())),
    column("要介護状態区分コード", "care_level", Maybe(Code(CareLevel))),
    column("認定有効期間開始年月日", "certification_start", Maybe(Date())),
    column("認定有効期間終了年月日", "certification_end", Maybe(Date())),
    column("居宅サービス等区分支給限度基準額", "benefit_limit", Maybe(Number(6))),
    column("限度額適用期間開始年月日", "limit_start", Maybe(Date())),
    column("限度額適用期間終了年月日", "limit_end", Maybe(Date())),
    column("利用者負担割合", "burden_ratio", Code(BurdenRatio)),
    column("住所地特例対象者区分", "special_address", Flag()),
    column("施設所在保険者番号", "facility_insurer_number", Maybe(InsurerNumber())),
)

CHANGE_COLUMNS: Final[tuple[Column, ...]] = (
    column(_RECORD_KIND, None, Fixed("2")),
    column(_RECORD_NUMBER, None, _NUMBER_CODEC),
    column(_EXCHANGE_ID, None, Fixed(ExchangeId.CHANGE.value)),
    *_CHANGE_BODY,
)

_CORRECTION_TAIL: Final[tuple[Column, ...]] = (
    column("訂正年月日", "corrected_on", Date()),
    column("訂正区分コード", "correction_kind", Code(CorrectionKind)),
)

CORRECTION_COLUMNS: Final[tuple[Column, ...]] = (
    column(_RECORD_KIND, None, Fixed("2")),
    column(_RECORD_NUMBER, None, _NUMBER_CODEC),
    column(_EXCHANGE_ID, None, Fixed(ExchangeId.CORRECTION.value)),
    *_CHANGE_BODY,
    *_CORRECTION_TAIL,
)

END_COLUMNS: Final[tuple[Column, ...]] = (
    column(_RECORD_KIND, None, Fixed("3")),
    column(_RECORD_NUMBER, None, _NUMBER_CODEC),
)

_CORRECTION_ATTRS: Final = frozenset(c.attr for c in _CORRECTION_TAIL)
_END: Final = EndRecord()

# --------------------------------------------------------------------------- cross-field rules


def _check_control(control: ControlRecord) -> list[KokuhorenCsvError]:
    if control.prefecture_number != control.insurer_number[:2]:
        return [
            CsvFieldError(
                "都道府県番号 does not match the first two digits of 保険者番号",
                field="都道府県番号",
            )
        ]
    return []


def _check_period(
    errors: list[KokuhorenCsvError], start: date | None, end: date | None, end_field: str, what: str
) -> None:
    if start is not None and end is not None and start > end:
        errors.append(CsvPeriodError(f"{what} ends before it starts", field=end_field))


def _check_change(change: RecipientChange) -> list[KokuhorenCsvError]:
    errors: list[KokuhorenCsvError] = []
    if change.disqualified_on is not None and change.disqualified_on < change.qualified_on:
        errors.append(
            CsvPeriodError("資格喪失年月日 is before 資格取得年月日", field="資格喪失年月日")
        )
    certified = change.care_level is not None and change.care_level.is_certified
    for value, name in (
        (change.certification_start, "認定有効期間開始年月日"),
        (change.certification_end, "認定有効期間終了年月日"),
    ):
        if certified and value is None:
            errors.append(
                CsvFieldError("required when 要介護状態区分コード is 要支援 or 要介護", field=name)
            )
        if not certified and value is not None:
            errors.append(
                CsvFieldError("must be empty for 非該当 and for 非認定 (no 区分)", field=name)
            )
    _check_period(
        errors,
        change.certification_start,
        change.certification_end,
        "認定有効期間終了年月日",
        "認定有効期間",
    )
    limit = (
        (change.benefit_limit, "居宅サービス等区分支給限度基準額"),
        (change.limit_start, "限度額適用期間開始年月日"),
        (change.limit_end, "限度額適用期間終了年月日"),
    )
    if any(value is not None for value, _ in limit):
        errors.extend(
            CsvFieldError("支給限度基準額 and its 限度額適用期間 go together", field=name)
            for value, name in limit
            if value is None
        )
    _check_period(
        errors, change.limit_start, change.limit_end, "限度額適用期間終了年月日", "限度額適用期間"
    )
    if change.special_address and change.facility_insurer_number is None:
        errors.append(
            CsvFieldError("required when 住所地特例対象者区分 is 1", field="施設所在保険者番号")
        )
    if not change.special_address and change.facility_insurer_number is not None:
        errors.append(
            CsvFieldError(
                "must be empty unless 住所地特例対象者区分 is 1", field="施設所在保険者番号"
            )
        )
    return errors


# --------------------------------------------------------------------------- values ↔ records


def _columns_for(values: Sequence[str]) -> tuple[Column, ...] | KokuhorenCsvError:
    kind = values[0]
    if kind == "1":
        return CONTROL_COLUMNS
    if kind == "3":
        return END_COLUMNS
    if kind != "2":
        return CsvUnknownCodeError("レコード種別 must be 1, 2 or 3", field=_RECORD_KIND)
    if len(values) < 3:
        return CsvFieldCountError(f"record has {len(values)} values", field=None)
    if values[2] == ExchangeId.CHANGE.value:
        return CHANGE_COLUMNS
    if values[2] == ExchangeId.CORRECTION.value:
        return CORRECTION_COLUMNS
    return CsvUnknownCodeError("交換情報識別番号 must be 5311 or 5321", field=_EXCHANGE_ID)


def parse_columns(
    columns: tuple[Column, ...],
    values: Sequence[str],
    label: int | None,
    check: Callable[[Column, Any], KokuhorenCsvError | None] | None = None,
) -> tuple[list[tuple[Column, Any]], list[KokuhorenCsvError]]:
    """Each column's parsed value and every defect, placed at record ``label``, in column
    order (shared: the other 国保連 files of :mod:`.kokuhoren_flows` parse the same way);
    ``check`` adds a defect of a value that parsed."""
    if len(values) != len(columns):
        return [], [
            CsvFieldCountError(
                f"record has {len(values)} values, its layout has {len(columns)}",
                record_number=label,
            )
        ]
    fields: list[tuple[Column, Any]] = []
    errors: list[KokuhorenCsvError] = []
    for col, text in zip(columns, values, strict=True):
        try:
            value = col.codec.parse(text, col.name)
        except KokuhorenCsvError as exc:
            errors.append(exc.located(label))
            continue
        problem = check(col, value) if check is not None else None
        if problem is not None:
            errors.append(problem)
        fields.append((col, value))
    return fields, errors


def _decode_values(
    values: Sequence[str], label: int | None
) -> tuple[Record | None, list[KokuhorenCsvError]]:
    """The record in ``values`` or every defect found, placed at record ``label``."""
    columns = _columns_for(values)
    if isinstance(columns, KokuhorenCsvError):
        return None, [columns.located(label)]
    fields, errors = parse_columns(columns, values, label)
    if errors:
        return None, errors
    parsed = {col.attr: value for col, value in fields if col.attr is not None}
    record: Record
    if columns is CONTROL_COLUMNS:
        control = ControlRecord(**parsed)
        errors, record = _check_control(control), control
    elif columns is END_COLUMNS:
        record = _END
    else:
        tail = {attr: parsed.pop(attr) for attr in _CORRECTION_ATTRS if attr in parsed}
        change = RecipientChange(**parsed)
        errors = _check_change(change)
        record = RecipientCorrection(change, **tail) if tail else change
    if errors:
        return None, [error.located(label) for error in errors]
    return record, []


def _layout_of(record: object) -> tuple[Column, ...]:
    if isinstance(record, ControlRecord):
        return CONTROL_COLUMNS
    if isinstance(record, RecipientChange):
        return CHANGE_COLUMNS
    if isinstance(record, RecipientCorrection):
        return CORRECTION_COLUMNS
    if isinstance(record, EndRecord):
        return END_COLUMNS
    raise CsvStructureError("not a 国保連 record (control, data or end record)")


def _attribute(record: object, attr: str) -> object:
    if isinstance(record, RecipientCorrection) and attr not in _CORRECTION_ATTRS:
        return getattr(record.change, attr)
    return getattr(record, attr)


def _format_values(record: object, record_number: int) -> list[str]:
    values: list[str] = []
    for col in _layout_of(record):
        value: object
        if col.attr is not None:
            value = _attribute(record, col.attr)
        elif col.name == _RECORD_NUMBER:
            value = record_number
        elif isinstance(col.codec, Fixed):  # レコード種別, 交換情報識別番号
            value = col.codec.constant
        else:  # 事業所番号
            value = None
        try:
            values.append(col.codec.format(value, col.name))
        except KokuhorenCsvError as exc:
            raise exc.located(record_number) from None
    return values


def encode_record(record: Record, record_number: int) -> bytes:
    """One record as a CP932 line with its CRLF, checked by the decoder's rules.

    Raises a :class:`KokuhorenCsvError` naming ``record_number`` and the field
    for any value 国保連 would refuse, a character outside CP932 included.
    """
    values = _format_values(record, record_number)
    _, errors = _decode_values(values, record_number)
    if errors:
        raise errors[0]
    try:
        return (join_values(values) + "\r\n").encode("cp932")
    except UnicodeEncodeError:  # pragma: no cover - the field rules refuse these first
        raise CsvCharsetError(
            "value cannot be encoded in Shift_JIS (CP932)", record_number=record_number
        ) from None


def encode_file(file: TransmissionFile) -> bytes:
    """The bytes of a whole file: control, data records numbered from 2, end.

    Refuses a レコード件数 that differs from the records given and data records
    whose 交換情報識別番号 does not belong to the file's データ種別.
    """
    control = file.control
    parts = [encode_record(control, 1)]
    if control.record_count != len(file.records):
        raise CsvCountMismatchError(
            f"レコード件数 is {control.record_count} but there are {len(file.records)} records",
            record_number=1,
            field=_RECORD_COUNT,
        )
    expected = RecipientChange if control.data_type is DataType.CHANGE else RecipientCorrection
    for record_number, record in enumerate(file.records, start=2):
        if not isinstance(record, expected):
            raise CsvDataTypeError(
                f"a data record of データ種別 {control.data_type.value} must have "
                f"交換情報識別番号 {control.data_type.exchange_id.value}",
                record_number=record_number,
                field=_EXCHANGE_ID,
            )
        parts.append(encode_record(record, record_number))
    parts.append(encode_record(_END, len(file.records) + 2))
    return b"".join(parts)


# ------------------------------------------ decoding, shared with kokuhoren_flows
#
# Every 国保連 CSV file has the same framing, line and value rules and the same strict and
# lenient modes, so :mod:`.kokuhoren_flows` decodes its files with these.


def line_values(raw: bytes, label: int | None, limits: CsvLimits) -> list[str]:
    """The values of one line without its CRLF; raises located errors (shared: the other
    国保連 files of :mod:`.kokuhoren_flows` have the same line rules)."""
    if len(raw) > limits.max_line_bytes:
        raise CsvLimitError(
            f"line is longer than {limits.max_line_bytes} bytes", record_number=label
        )
    if b"\r" in raw or b"\n" in raw:
        raise CsvLineEndError(
            "line contains a bare CR or LF (lines must end with CRLF)", record_number=label
        )
    try:
        text = raw.decode("cp932")
    except UnicodeDecodeError as exc:
        raise CsvCharsetError(
            f"bytes at offset {exc.start} are not Shift_JIS (CP932)", record_number=label
        ) from None
    try:
        return split_values(text)
    except KokuhorenCsvError as exc:
        raise exc.located(label) from None


class Collector:
    """Raises the first error (strict) or collects up to ``max_errors`` (lenient).

    Shared: :mod:`.kokuhoren_flows` decodes its files with the same strict and lenient modes.
    """

    def __init__(self, *, strict: bool, max_errors: int) -> None:
        self.strict = strict
        self.max_errors = max_errors
        self.errors: list[KokuhorenCsvError] = []

    def add(self, error: KokuhorenCsvError) -> None:
        if self.strict:
            raise error
        self.errors.append(error)
        if len(self.errors) >= self.max_errors:
            self.errors.append(
                CsvLimitError(f"more than {self.max_errors} errors; decoding stopped")
            )
            raise StopDecodingError("the lenient decoder has seen enough errors")


def split_lines(data: bytes, limits: CsvLimits) -> tuple[list[bytes], bool]:
    """The lines of ``data`` and whether the last one ended with CRLF; fatal checks (shared:
    the files of :mod:`.kokuhoren_flows` are framed the same way)."""
    if len(data) > limits.max_bytes:
        raise CsvLimitError(f"file is larger than {limits.max_bytes} bytes")
    if not data:
        raise CsvStructureError("the file is empty")
    if data.startswith(b"\xef\xbb\xbf"):
        raise CsvCharsetError("file starts with a UTF-8 byte order mark; expected Shift_JIS")
    if b"\r\n" not in data and (b"\n" in data or b"\r" in data):
        raise CsvLineEndError("lines end with LF or CR only; expected CRLF")
    if data.count(b"\r\n") > limits.max_records + 2:
        raise CsvLimitError(f"file has more than {limits.max_records} data records")
    lines = data.split(b"\r\n")
    terminated = lines[-1] == b""
    if terminated:
        lines.pop()
    return lines, terminated


# --------------------------------------------------------------------------- decoding


def decode_record(line: bytes, limits: CsvLimits = DEFAULT_LIMITS) -> NumberedRecord[Record]:
    """One record from one line (its CRLF optional), checked on its own.

    Checks that need the whole file (numbering, counts, データ種別) are left to
    :func:`decode_file`. Raises a :class:`KokuhorenCsvError` on any defect.
    """
    raw = line.removesuffix(b"\r\n")
    values = line_values(raw, None, limits)
    label: int | None = None
    if len(values) >= 2:
        try:
            label = _NUMBER_CODEC.parse(values[1], _RECORD_NUMBER)
        except KokuhorenCsvError:
            label = None
    record, errors = _decode_values(values, label)
    if errors:
        raise errors[0]
    assert record is not None
    assert label is not None
    return NumberedRecord(label, record)


@dataclass(slots=True)
class _Progress:
    control: ControlRecord | None = None
    records: list[NumberedRecord[DataRecord]] | None = None


def _decode_lines(
    lines: list[bytes], terminated: bool, limits: CsvLimits, sink: Collector, out: _Progress
) -> None:
    last = len(lines)
    has_end = last > 1 and lines[-1].startswith(b'"3"')
    data_count = last - 1 - (1 if has_end else 0)
    records = out.records = []
    for position, raw in enumerate(lines, start=1):
        failed_before = len(sink.errors)
        if position == last and not terminated:
            sink.add(CsvLineEndError("the last line does not end with CRLF", record_number=last))
        try:
            values = line_values(raw, position, limits)
        except KokuhorenCsvError as exc:
            sink.add(exc)
            continue
        kind = values[0]
        if position == 1 and kind != "1":
            sink.add(
                CsvStructureError(
                    "the first record must be the control record (レコード種別 1)",
                    record_number=1,
                    field=_RECORD_KIND,
                )
            )
            continue
        if position > 1 and kind == "1":
            sink.add(
                CsvStructureError(
                    "a control record may only be the first record",
                    record_number=position,
                    field=_RECORD_KIND,
                )
            )
            continue
        if kind == "3" and position != last:
            sink.add(
                CsvStructureError(
                    "the end record must be the last record",
                    record_number=position,
                    field=_RECORD_KIND,
                )
            )
            continue
        if len(values) >= 2:
            try:
                wire_number = _NUMBER_CODEC.parse(values[1], _RECORD_NUMBER)
            except KokuhorenCsvError:
                wire_number = position  # the layout check below reports it
            if wire_number != position:
                sink.add(
                    CsvRecordNumberError(
                        f"レコード番号 must be {position} (numbers run from 1 without gaps)",
                        record_number=position,
                        field=_RECORD_NUMBER,
                    )
                )
        record, errors = _decode_values(values, position)
        for error in errors:
            sink.add(error)
        if isinstance(record, ControlRecord):
            out.control = record
            if record.record_count != data_count:
                sink.add(
                    CsvCountMismatchError(
                        f"レコード件数 is {record.record_count} but the file has "
                        f"{data_count} data records",
                        record_number=1,
                        field=_RECORD_COUNT,
                    )
                )
        elif isinstance(record, RecipientChange | RecipientCorrection):
            control = out.control
            exchange = (
                ExchangeId.CHANGE if isinstance(record, RecipientChange) else ExchangeId.CORRECTION
            )
            if control is not None and exchange.data_type is not control.data_type:
                sink.add(
                    CsvDataTypeError(
                        f"交換情報識別番号 {exchange.value} does not belong to "
                        f"データ種別 {control.data_type.value}",
                        record_number=position,
                        field=_EXCHANGE_ID,
                    )
                )
            if len(sink.errors) == failed_before:
                records.append(NumberedRecord(position, record))
    if not has_end:
        sink.add(CsvStructureError("the file does not end with an end record (レコード種別 3)"))


def _decode(data: bytes, limits: CsvLimits, *, strict: bool) -> DecodeResult:
    sink = Collector(strict=strict, max_errors=limits.max_errors)
    progress = _Progress()
    try:
        lines, terminated = split_lines(data, limits)
        _decode_lines(lines, terminated, limits, sink, progress)
    except StopDecodingError:
        pass
    except KokuhorenCsvError as exc:
        if strict:
            raise
        sink.errors.append(exc)
    return DecodeResult(
        control=progress.control,
        records=tuple(progress.records or ()),
        errors=tuple(RecordError.of(error) for error in sink.errors),
    )


def decode_file(data: bytes, limits: CsvLimits = DEFAULT_LIMITS) -> TransmissionFile:
    """The file in ``data``; raises the first :class:`KokuhorenCsvError` found."""
    result = _decode(data, limits, strict=True)
    if result.control is None:  # pragma: no cover - strict decoding raised already
        raise CsvStructureError("the file has no readable control record", record_number=1)
    return TransmissionFile(result.control, tuple(item.record for item in result.records))


def decode_records(data: bytes, limits: CsvLimits = DEFAULT_LIMITS) -> DecodeResult:
    """Every good data record of ``data`` and one :class:`RecordError` per defect.

    Never raises for bad input: defects of the whole file (size, line ends,
    missing end record, レコード件数) are reported as errors too, so that the
    国保連 simulator can accept the good records and report the bad ones.
    """
    return _decode(data, limits, strict=False)


# --------------------------------------------------------------------------- file names

_FILE_NAME: Final = re.compile(r"10_(531|532)([0-9]{6})([0-9]{6})\.csv")


@dataclass(frozen=True, slots=True)
class FileName:
    """The parts of a transmission file name."""

    data_type: DataType
    insurer_number: str
    processing_month: YearMonth


def file_name(data_type: DataType, insurer_number: str, processing_month: YearMonth) -> str:
    """``10_{データ種別}{保険者番号}{YYYYMM}.csv``, e.g. ``10_531121004202404.csv``."""
    if not isinstance(data_type, DataType):
        raise CsvFileNameError("データ種別 must be 531 or 532")
    if not isinstance(insurer_number, str) or not is_valid_insurer_number(insurer_number):
        raise CsvFileNameError("保険者番号 must be 6 digits with a valid check digit")
    if not isinstance(processing_month, YearMonth):
        raise CsvFileNameError("処理対象年月 must be a YearMonth")
    return f"10_{data_type.value}{insurer_number}{processing_month}.csv"


def parse_file_name(name: str) -> FileName:
    """The parts of a file name built by :func:`file_name`; refuses anything else."""
    matched = _FILE_NAME.fullmatch(name)
    if matched is None:
        raise CsvFileNameError("file name must be 10_{531|532}{保険者番号}{YYYYMM}.csv")
    data_type, insurer_number, month = matched.groups()
    if not is_valid_insurer_number(insurer_number):
        raise CsvFileNameError("保険者番号 in the file name has an invalid check digit")
    try:
        processing_month = YearMonth(int(month[:4]), int(month[4:]))
    except ValueError:
        raise CsvFileNameError("処理対象年月 in the file name is not a real month") from None
    return FileName(DataType(data_type), insurer_number, processing_month)


def check_file_name(name: str, control: ControlRecord) -> None:
    """Refuse a file whose name disagrees with its control record."""
    parsed = parse_file_name(name)
    expected = FileName(control.data_type, control.insurer_number, control.processing_month)
    if parsed != expected:
        raise CsvFileNameError(
            "file name does not match データ種別, 保険者番号 and 処理対象年月 of the control record"
        )
