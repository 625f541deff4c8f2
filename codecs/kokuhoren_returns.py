"""Return files from 国保連 to the 保険者: 給付実績 (emulator layout).

The 国保連 simulator produces these after its monthly review and the gateway
fetches and ingests them (DESIGN §3 flow 6). The real 給付実績情報 layout is
long; this emulator keeps the items a 保険者 reconciles against its own
records, in the same CSV conventions as :mod:`chukan.codecs.kokuhoren`:
Shift_JIS (CP932), CRLF, every value in double quotes, no header row, a
control record, data records, an end record, レコード番号 = line position.

File name ``10_861{保険者番号}{YYYYMM}.csv`` (YYYYMM = 処理対象年月, the 審査 month).

Control record (レコード種別 1, 8 values)
----------------------------------------
| # | 項目             | format                                 |
|---|------------------|----------------------------------------|
| 1 | レコード種別     | "1"                                    |
| 2 | レコード番号     | 1                                      |
| 3 | ボリューム通番   | integer ≥ 1, 1-3 digits                |
| 4 | レコード件数     | integer ≥ 0, 1-9 digits; = data records |
| 5 | データ種別       | "861" (給付実績, emulator code)        |
| 6 | 保険者番号       | 6 digits, 01-47 first, 検証番号 last   |
| 7 | 処理対象年月     | YYYYMM                                 |
| 8 | ファイル管理番号 | 1-10 digits                            |

Data record (レコード種別 2, 10 values), all required
----------------------------------------------------
| #  | 項目             | format                                     |
|----|------------------|--------------------------------------------|
| 1  | レコード種別     | "2"                                        |
| 2  | レコード番号     | position of the line                       |
| 3  | 交換情報識別番号 | "8611"                                     |
| 4  | サービス提供年月 | YYYYMM, not after 処理対象年月              |
| 5  | 被保険者番号     | 10 digits                                  |
| 6  | 事業所番号       | 10 digits                                  |
| 7  | サービス種類コード | 2 digits                                 |
| 8  | 単位数           | integer, 1-9 digits                        |
| 9  | 保険給付額       | integer 円, 1-9 digits                     |
| 10 | 利用者負担額     | integer 円, 1-9 digits                     |

保険給付額 + 利用者負担額 = 単位数 × 10 円 (the emulator's 単位数単価).

End record (レコード種別 3): "3", レコード番号.

:func:`decode_benefit_file` is strict: it raises the first defect as a
:class:`~chukan.codecs.errors.KokuhorenCsvError` (record number and
field, never the value).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Final

from .errors import (
    CsvCharsetError,
    CsvCountMismatchError,
    CsvFieldCountError,
    CsvFieldError,
    CsvFileNameError,
    CsvLimitError,
    CsvLineEndError,
    CsvRecordNumberError,
    CsvStructureError,
    KokuhorenCsvError,
)
from .kokuhoren_fields import (
    Column,
    Digits,
    Fixed,
    InsurerNumber,
    Month,
    Number,
    YearMonth,
    column,
    is_valid_insurer_number,
    join_values,
    split_values,
)

__all__ = [
    "BENEFIT_COLUMNS",
    "BENEFIT_CONTROL_COLUMNS",
    "BENEFIT_DATA_TYPE",
    "BENEFIT_EXCHANGE_ID",
    "UNIT_PRICE_YEN",
    "BenefitControl",
    "BenefitFile",
    "BenefitRecord",
    "benefit_file_name",
    "decode_benefit_file",
    "encode_benefit_file",
    "parse_benefit_file_name",
]

BENEFIT_DATA_TYPE: Final = "861"
BENEFIT_EXCHANGE_ID: Final = "8611"
#: 単位数単価 of the emulator: one 単位 is 10 円.
UNIT_PRICE_YEN: Final = 10
MAX_FILE_BYTES: Final = 64 * 1024 * 1024
MAX_LINE_BYTES: Final = 1024


@dataclass(frozen=True, slots=True)
class BenefitControl:
    """コントロールレコード of a 給付実績 file."""

    volume_number: int  # ボリューム通番
    record_count: int  # レコード件数
    insurer_number: str  # 保険者番号
    processing_month: YearMonth  # 処理対象年月 (審査年月)
    file_management_number: str  # ファイル管理番号


@dataclass(frozen=True, slots=True)
class BenefitRecord:
    """給付実績 of one recipient, one provider, one service kind, one month."""

    service_month: YearMonth  # サービス提供年月
    insured_number: str  # 被保険者番号
    provider_number: str  # 事業所番号
    service_type: str  # サービス種類コード
    units: int  # 単位数
    benefit_amount: int  # 保険給付額 (円)
    copayment: int  # 利用者負担額 (円)


@dataclass(frozen=True, slots=True)
class BenefitFile:
    """A whole 給付実績 file (the end record is implied)."""

    control: BenefitControl
    records: tuple[BenefitRecord, ...]

    @classmethod
    def build(cls, control: BenefitControl, records: Iterable[BenefitRecord]) -> BenefitFile:
        """A file whose レコード件数 is set from ``records``."""
        items = tuple(records)
        return cls(replace(control, record_count=len(items)), items)

    @property
    def file_name(self) -> str:
        return benefit_file_name(self.control.insurer_number, self.control.processing_month)


_RECORD_KIND: Final = "レコード種別"
_RECORD_NUMBER: Final = "レコード番号"
_RECORD_COUNT: Final = "レコード件数"
_NUMBER: Final = Number(10, minimum=1)

BENEFIT_CONTROL_COLUMNS: Final[tuple[Column, ...]] = (
    column(_RECORD_KIND, None, Fixed("1")),
    column(_RECORD_NUMBER, None, _NUMBER),
    column("ボリューム通番", "volume_number", Number(3, minimum=1)),
    column(_RECORD_COUNT, "record_count", Number(9)),
    column("データ種別", None, Fixed(BENEFIT_DATA_TYPE)),
    column("保険者番号", "insurer_number", InsurerNumber()),
    column("処理対象年月", "processing_month", Month()),
    column("ファイル管理番号", "file_management_number", Digits(1, 10)),
)

BENEFIT_COLUMNS: Final[tuple[Column, ...]] = (
    column(_RECORD_KIND, None, Fixed("2")),
    column(_RECORD_NUMBER, None, _NUMBER),
    column("交換情報識別番号", None, Fixed(BENEFIT_EXCHANGE_ID)),
    column("サービス提供年月", "service_month", Month()),
    column("被保険者番号", "insured_number", Digits(10)),
    column("事業所番号", "provider_number", Digits(10)),
    column("サービス種類コード", "service_type", Digits(2)),
    column("単位数", "units", Number(9)),
    column("保険給付額", "benefit_amount", Number(9)),
    column("利用者負担額", "copayment", Number(9)),
)

_END_COLUMNS: Final[tuple[Column, ...]] = (
    column(_RECORD_KIND, None, Fixed("3")),
    column(_RECORD_NUMBER, None, _NUMBER),
)


def _format(columns: tuple[Column, ...], record: object, record_number: int) -> bytes:
    values: list[str] = []
    for col in columns:
        value: object
        if col.attr is not None:
            value = getattr(record, col.attr)
        elif col.name == _RECORD_NUMBER:
            value = record_number
        else:
            assert isinstance(col.codec, Fixed)
            value = col.codec.constant
        try:
            values.append(col.codec.format(value, col.name))
        except KokuhorenCsvError as exc:
            raise exc.located(record_number) from None
    line = (join_values(values) + "\r\n").encode("cp932")
    _parse(columns, line[:-2], record_number)  # the decoder's rules on our own output
    return line


def _parse(columns: tuple[Column, ...], raw: bytes, position: int) -> dict[str, Any]:
    if len(raw) > MAX_LINE_BYTES:
        raise CsvLimitError(f"line is longer than {MAX_LINE_BYTES} bytes", record_number=position)
    if b"\r" in raw or b"\n" in raw:
        raise CsvLineEndError("line contains a bare CR or LF", record_number=position)
    try:
        text = raw.decode("cp932")
    except UnicodeDecodeError:
        raise CsvCharsetError("bytes are not Shift_JIS (CP932)", record_number=position) from None
    try:
        values = split_values(text)
    except KokuhorenCsvError as exc:
        raise exc.located(position) from None
    if len(values) != len(columns):
        raise CsvFieldCountError(
            f"record has {len(values)} values, its layout has {len(columns)}",
            record_number=position,
        )
    parsed: dict[str, Any] = {}
    for col, text_value in zip(columns, values, strict=True):
        try:
            value = col.codec.parse(text_value, col.name)
        except KokuhorenCsvError as exc:
            raise exc.located(position) from None
        if col.name == _RECORD_NUMBER and value != position:
            raise CsvRecordNumberError(
                f"レコード番号 must be {position}", record_number=position, field=_RECORD_NUMBER
            )
        if col.attr is not None:
            parsed[col.attr] = value
    return parsed


def _check_record(record: BenefitRecord, month: YearMonth | None, position: int) -> None:
    if record.benefit_amount + record.copayment != record.units * UNIT_PRICE_YEN:
        raise CsvFieldError(
            f"保険給付額 and 利用者負担額 must add up to 単位数 × {UNIT_PRICE_YEN} 円",
            record_number=position,
            field="利用者負担額",
        )
    if month is not None and record.service_month > month:
        raise CsvFieldError(
            "サービス提供年月 is after 処理対象年月",
            record_number=position,
            field="サービス提供年月",
        )


def encode_benefit_file(file: BenefitFile) -> bytes:
    """The bytes of a 給付実績 file, checked by the decoder's rules."""
    control = file.control
    if control.record_count != len(file.records):
        raise CsvCountMismatchError(
            f"レコード件数 is {control.record_count} but there are {len(file.records)} records",
            record_number=1,
            field=_RECORD_COUNT,
        )
    parts = [_format(BENEFIT_CONTROL_COLUMNS, control, 1)]
    for position, record in enumerate(file.records, start=2):
        _check_record(record, control.processing_month, position)
        parts.append(_format(BENEFIT_COLUMNS, record, position))
    parts.append(_format(_END_COLUMNS, None, len(file.records) + 2))
    return b"".join(parts)


def decode_benefit_file(data: bytes) -> BenefitFile:
    """The 給付実績 file in ``data``; raises the first defect found."""
    if len(data) > MAX_FILE_BYTES:
        raise CsvLimitError(f"file is larger than {MAX_FILE_BYTES} bytes")
    if not data:
        raise CsvStructureError("the file is empty")
    if not data.endswith(b"\r\n"):
        raise CsvLineEndError("the file does not end with CRLF")
    lines = data[:-2].split(b"\r\n")
    if len(lines) < 2:
        raise CsvStructureError("a file needs a control record and an end record")
    if not lines[0].startswith(b'"1"'):
        raise CsvStructureError(
            "the first record must be the control record", record_number=1, field=_RECORD_KIND
        )
    if not lines[-1].startswith(b'"3"'):
        raise CsvStructureError(
            "the last record must be the end record", record_number=len(lines), field=_RECORD_KIND
        )
    control = BenefitControl(**_parse(BENEFIT_CONTROL_COLUMNS, lines[0], 1))
    records: list[BenefitRecord] = []
    for position, raw in enumerate(lines[1:-1], start=2):
        if not raw.startswith(b'"2"'):
            raise CsvStructureError(
                "only data records may stand between control and end records",
                record_number=position,
                field=_RECORD_KIND,
            )
        record = BenefitRecord(**_parse(BENEFIT_COLUMNS, raw, position))
        _check_record(record, control.processing_month, position)
        records.append(record)
    _parse(_END_COLUMNS, lines[-1], len(lines))
    if control.record_count != len(records):
        raise CsvCountMismatchError(
            f"レコード件数 is {control.record_count} but the file has {len(records)} data records",
            record_number=1,
            field=_RECORD_COUNT,
        )
    return BenefitFile(control, tuple(records))


_FILE_NAME: Final = re.compile(r"10_861([0-9]{6})([0-9]{6})\.csv")


def benefit_file_name(insurer_number: str, processing_month: YearMonth) -> str:
    """``10_861{保険者番号}{YYYYMM}.csv``."""
    if not is_valid_insurer_number(insurer_number):
        raise CsvFileNameError("保険者番号 must be 6 digits with a valid check digit")
    return f"10_{BENEFIT_DATA_TYPE}{insurer_number}{processing_month}.csv"


def parse_benefit_file_name(name: str) -> tuple[str, YearMonth]:
    """保険者番号 and 処理対象年月 of a 給付実績 file name; refuses anything else."""
    matched = _FILE_NAME.fullmatch(name)
    if matched is None or not is_valid_insurer_number(matched.group(1)):
        raise CsvFileNameError("file name must be 10_861{保険者番号}{YYYYMM}.csv")
    month = matched.group(2)
    try:
        return matched.group(1), YearMonth(int(month[:4]), int(month[4:]))
    except ValueError:
        raise CsvFileNameError("処理対象年月 in the file name is not a real month") from None
