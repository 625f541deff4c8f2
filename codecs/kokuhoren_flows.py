"""The other 国保連 files of 介護保険 伝送: 給付管理票, 償還払い実績, 特別徴収 依頼 and 結果.

The assessment (千葉市 介護保険 特定個人情報保護評価書) has the 保険者 send
給付管理票 and 償還払い支給の実績 to 国保連 and ask it to arrange 特別徴収 of the
premium; 国保連 answers the 特別徴収 with its results. These files share the
frame of :mod:`chukan.codecs.kokuhoren` (Shift_JIS/CP932, CRLF, every value in
double quotes, no header, control record, data records, end record, レコード番号 =
line position) and its field codecs; each flow adds its data record layout.

Sources and what is chukan's own (see ``docs/kokuhoren.md`` for the citations):

* **給付管理票** — データ種別 ``821``, 交換情報識別番号 ``8221`` 給付管理票情報, 24
  items in the order of the インタフェース仕様書 (居宅介護支援事業所編) as a public
  implementation reproduces it: per person and month, 明細行 01–98 and a 終端行
  99 carrying the 区分支給限度基準額 and the totals; 給付管理票情報作成区分コード
  1 新規 / 2 修正 / 3 取消; 証記載保険者番号 in 8 digits (the 6-digit 保険者番号
  with two leading zeros). The 総括票 record (8211) of a 事業所's file is left
  out: a 保険者 sends the 給付管理票 of plans it made itself (自己作成).
  居宅サービス計画作成区分コード 2 = 自己作成 and the 指定/基準該当 list beyond 1
  are unconfirmed.
* **償還払い実績** — the published flow is 保険者保有給付実績情報 (作成区分 1 新規 /
  2 修正 / 3 取消, answered by 保険者保有給付実績更新結果情報); its record
  layout could not be reached, so data type ``911`` / exchange id ``9111`` and
  the items below are **chukan's**.
* **特別徴収依頼 / 結果** — published as fixed-length 経由機関 files (介護特別徴収
  依頼情報 Z12, 結果情報 Z14) with 通知内容コード 01 特別徴収依頼通知 / 22 特別徴収
  結果通知 and their 各種区分 codes, which are kept here. The CSV frame, data
  types ``951`` / ``952``, exchange ids ``9511`` / ``9521`` and the item selection
  are **chukan's**.

Decoding is bounded (:class:`~chukan.codecs.kokuhoren.CsvLimits`: bytes, line
length, records, errors) and pure: bytes in, values out. :func:`decode_flow_records`
never raises for bad input and reports one :class:`~chukan.codecs.kokuhoren.RecordError`
per defect (record number, item, code; never a value); :func:`decode_flow_file`
raises the first. :func:`encode_flow_file` runs the strict decoder on its own
output, so nothing is written that 国保連 would refuse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import date
from enum import StrEnum
from typing import Any, Final, Generic, TypeVar

from .errors import (
    CsvCountMismatchError,
    CsvFieldError,
    CsvFileNameError,
    CsvRecordNumberError,
    CsvStructureError,
    CsvUnknownCodeError,
    KokuhorenCsvError,
    StopDecodingError,
)
from .item_model import CareLevel
from .kokuhoren import (
    DEFAULT_LIMITS,
    Collector,
    CsvLimits,
    RecordError,
    line_values,
    parse_columns,
    split_lines,
)
from .kokuhoren_fields import (
    Code,
    Column,
    Date,
    Digits,
    Empty,
    Fixed,
    InsurerNumber,
    Kana,
    Maybe,
    Month,
    Number,
    Prefecture,
    Required,
    Sex,
    YearMonth,
    column,
    is_valid_insurer_number,
    join_values,
)

__all__ = [
    "ALL_FLOWS",
    "BENEFIT_PLAN",
    "COLLECTION_REQUEST",
    "COLLECTION_RESULT",
    "REIMBURSEMENT",
    "UNIT_PRICE_YEN",
    "BenefitPlan",
    "CollectionRequest",
    "CollectionRequestKind",
    "CollectionResult",
    "CollectionResultKind",
    "CreationKind",
    "FlowControl",
    "FlowDecodeResult",
    "FlowFile",
    "FlowSpec",
    "NumberedItem",
    "PlanLine",
    "PlanMaker",
    "ProviderKind",
    "Reimbursement",
    "decode_flow_file",
    "decode_flow_records",
    "encode_flow_file",
    "flow_by_data_type",
    "flow_file_name",
    "parse_flow_file_name",
]

#: 単位数単価 of the emulator (as in the 給付実績 return file): one 単位 is 10 円.
UNIT_PRICE_YEN: Final = 10
MAX_PLAN_LINES: Final = 98
TERMINAL_LINE: Final = "99"

# --------------------------------------------------------------------------- code lists


class CreationKind(StrEnum):
    """給付管理票情報作成区分コード / 給付実績情報作成区分コード (published: 1/2/3)."""

    NEW = "1"  # 新規
    MODIFY = "2"  # 修正
    CANCEL = "3"  # 取消


class PlanMaker(StrEnum):
    """居宅サービス計画作成区分コード (1 published; 2 自己作成 unconfirmed)."""

    SUPPORT_OFFICE = "1"  # 居宅介護支援事業所作成
    SELF = "2"  # 自己作成


class ProviderKind(StrEnum):
    """指定/基準該当等事業所区分コード (1 指定 published; 2 unconfirmed)."""

    DESIGNATED = "1"  # 指定
    STANDARD = "2"  # 基準該当


class CollectionRequestKind(StrEnum):
    """各種区分 of 通知内容コード 01 特別徴収依頼通知 (published)."""

    TARGET = "01"  # 特別徴収対象者
    TARGET_SPECIAL_ADDRESS = "02"  # 特別徴収対象者（住所地特例該当）
    NOT_TARGET = "03"  # 特別徴収非対象者


class CollectionResultKind(StrEnum):
    """各種区分 of 通知内容コード 22 特別徴収結果通知 (published)."""

    NORMAL = "00"  # 正常
    LOST_RIGHT = "01"  # 失権
    STOPPED = "02"  # 差止
    PENSION_SHORT = "03"  # 支払年金額不足
    OTHER_SCHEME = "05"  # 特別徴収該当（他制度による中止）


# --------------------------------------------------------------------------- field codecs

_SERVICE_TYPE: Final = re.compile(r"[0-9A-Z]{2}")


class ServiceType(Required[str]):
    """サービス種類コード: two digits or capital letters (11, 2A, A1)."""

    spec = "2 characters 0-9 A-Z"

    def _parse(self, text: str, field: str) -> str:
        if not _SERVICE_TYPE.fullmatch(text):
            raise CsvFieldError("value must be two digits or capital letters", field=field)
        return text

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise CsvFieldError("value must be a string", field=field)
        return value


class PaddedInsurer(Required[str]):
    """証記載保険者番号 in 8 digits: ``00`` and the 6-digit 保険者番号 (check digit kept)."""

    spec = "8 digits, 00 + 保険者番号"

    def _parse(self, text: str, field: str) -> str:
        if len(text) != 8 or not (text.isascii() and text.isdigit()):
            raise CsvFieldError("value must be 8 digits", field=field)
        if not text.startswith("00") or not is_valid_insurer_number(text[2:]):
            raise CsvFieldError(
                "value must be 00 and a 保険者番号 with its check digit", field=field
            )
        return text[2:]

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise CsvFieldError("value must be a string of digits", field=field)
        return "00" + value


class Year(Required[int]):
    """A year written in four digits (賦課年度)."""

    spec = "YYYY"

    def _parse(self, text: str, field: str) -> int:
        if len(text) != 4 or not (text.isascii() and text.isdigit()) or text < "1900":
            raise CsvFieldError("value must be a year YYYY", field=field)
        return int(text)

    def _format(self, value: object, field: str) -> str:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CsvFieldError("value must be an integer year", field=field)
        return f"{value:04d}"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class FlowControl:
    """コントロールレコード of these files (the 531 layout, データ種別 per flow).

    福祉事務所特定番号 and 事業所番号 are empty, 都道府県番号 is the first two digits
    of 保険者番号 and 媒体区分 is 1 (伝送).
    """

    volume_number: int  # ボリューム通番
    record_count: int  # レコード件数 (data records, lines)
    insurer_number: str  # 保険者番号
    processing_month: YearMonth  # 処理対象年月
    file_management_number: str  # ファイル管理番号


@dataclass(frozen=True, slots=True)
class PlanLine:
    """明細行 of a 給付管理票: one service kind of one provider in the month."""

    provider_number: str  # 事業所番号 (サービス事業所)
    provider_kind: ProviderKind  # 指定/基準該当等事業所区分コード
    service_type: str  # サービス種類コード
    units: int  # 給付計画単位数


@dataclass(frozen=True, slots=True)
class BenefitPlan:
    """給付管理票 (8221) of one recipient and month: 明細行 01-98 and 終端行 99."""

    target_month: YearMonth  # 対象年月
    certificate_insurer_number: str  # 証記載保険者番号 (6 digits here, 8 on the wire)
    support_office: str | None  # 事業所番号 (居宅介護支援事業所; empty when 自己作成)
    creation_kind: CreationKind  # 給付管理票情報作成区分コード
    created_on: date  # 給付管理票作成年月日
    insured_number: str  # 被保険者番号
    birth_date: date  # 被保険者生年月日
    sex: Sex  # 性別コード
    care_level: CareLevel  # 要介護状態区分コード
    limit_start: YearMonth  # 限度額適用期間 (開始)
    limit_end: YearMonth  # 限度額適用期間 (終了)
    limit_units: int  # 居宅サービス区分支給限度基準額 (終端行)
    plan_maker: PlanMaker  # 居宅サービス計画作成区分コード
    lines: tuple[PlanLine, ...]

    @property
    def designated_units(self) -> int:
        """指定サービス分小計."""
        return sum(x.units for x in self.lines if x.provider_kind is ProviderKind.DESIGNATED)

    @property
    def standard_units(self) -> int:
        """基準該当サービス分小計."""
        return sum(x.units for x in self.lines if x.provider_kind is ProviderKind.STANDARD)

    @property
    def total_units(self) -> int:
        """給付計画合計単位数."""
        return sum(x.units for x in self.lines)


@dataclass(frozen=True, slots=True)
class _PlanRow:
    """One wire line of a 給付管理票 (a 明細行 or the 終端行)."""

    target_month: YearMonth
    certificate_insurer_number: str
    support_office: str | None
    creation_kind: CreationKind
    created_on: date
    line_number: str
    insured_number: str
    birth_date: date
    sex: Sex
    care_level: CareLevel
    limit_start: YearMonth
    limit_end: YearMonth
    limit_units: int | None
    plan_maker: PlanMaker
    provider_number: str | None
    provider_kind: ProviderKind | None
    service_type: str | None
    units: int | None
    designated_units: int | None
    standard_units: int | None
    total_units: int | None


@dataclass(frozen=True, slots=True)
class Reimbursement:
    """償還払い実績 (chukan's 9111): one 償還払い 支給決定 of one service kind and month."""

    creation_kind: CreationKind  # 給付実績情報作成区分コード
    reference_number: str  # 整理番号 (the 保険者's key of the 実績, for 修正/取消)
    service_month: YearMonth  # サービス提供年月
    certificate_insurer_number: str  # 証記載保険者番号
    insured_number: str  # 被保険者番号
    provider_number: str  # 事業所番号
    service_type: str  # サービス種類コード
    units: int  # 単位数
    benefit_amount: int  # 保険給付額 (償還額, 円)
    copayment: int  # 利用者負担額 (円)
    decided_on: date  # 支給決定年月日


@dataclass(frozen=True, slots=True)
class CollectionRequest:
    """特別徴収依頼 (通知内容コード 01) of one person and 賦課年度 (chukan's 9511)."""

    obligor_code: str  # 特別徴収義務者コード (年金保険者, 3 digits)
    request_kind: CollectionRequestKind  # 各種区分
    pension_number: str  # 基礎年金番号 (10 digits)
    pension_code: str  # 年金コード (4 digits)
    insured_number: str  # 被保険者番号
    birth_date: date  # 生年月日
    sex: Sex  # 性別
    name_kana: str  # カナ氏名
    fiscal_year: int  # 賦課年度
    start_month: YearMonth  # 特別徴収開始年月
    amount_1: int  # 金額1 (円, per payment)
    amount_2: int  # 金額2
    amount_3: int  # 金額3


@dataclass(frozen=True, slots=True)
class CollectionResult:
    """特別徴収結果 (通知内容コード 22) for one request (chukan's 9521)."""

    obligor_code: str  # 特別徴収義務者コード
    result_kind: CollectionResultKind  # 各種区分
    pension_number: str  # 基礎年金番号
    pension_code: str  # 年金コード
    insured_number: str  # 被保険者番号
    fiscal_year: int  # 賦課年度
    result_on: date  # 各種年月日
    amount_1: int  # 金額1 (徴収額, 円)
    amount_2: int  # 金額2
    amount_3: int  # 金額3
    request_file_management_number: str  # 依頼ファイル管理番号 (chukan)
    request_record_number: int  # 依頼レコード番号 (chukan)


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NumberedItem(Generic[T]):
    """A decoded item with the レコード番号 of its first and last line."""

    first_record: int
    last_record: int
    item: T


@dataclass(frozen=True, slots=True)
class FlowDecodeResult(Generic[T]):
    """The good items, and one :class:`RecordError` per defect (bounded)."""

    control: FlowControl | None
    items: tuple[NumberedItem[T], ...]
    errors: tuple[RecordError, ...]
    record_count: int  # data lines read

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True, slots=True)
class FlowFile(Generic[T]):
    """A whole file of one flow (the end record is implied)."""

    control: FlowControl
    items: tuple[T, ...]


# --------------------------------------------------------------------------- layouts

_KIND: Final = "レコード種別"
_NUMBER: Final = "レコード番号"
_EXCHANGE: Final = "交換情報識別番号"
_COUNT: Final = "レコード件数"
_PREFECTURE: Final = "都道府県番号"
_NUMBER_CODEC: Final = Number(10, minimum=1)


def _control_columns(data_type: str) -> tuple[Column, ...]:
    return (
        column(_KIND, None, Fixed("1")),
        column(_NUMBER, None, _NUMBER_CODEC),
        column("ボリューム通番", "volume_number", Number(3, minimum=1)),
        column(_COUNT, "record_count", Number(9)),
        column("データ種別", None, Fixed(data_type)),
        column("福祉事務所特定番号", None, Empty()),
        column("保険者番号", "insurer_number", InsurerNumber()),
        column("事業所番号", None, Empty()),
        column(_PREFECTURE, None, Prefecture()),
        column("媒体区分", None, Fixed("1")),
        column("処理対象年月", "processing_month", Month()),
        column("ファイル管理番号", "file_management_number", Digits(1, 10)),
    )


_END_COLUMNS: Final = (column(_KIND, None, Fixed("3")), column(_NUMBER, None, _NUMBER_CODEC))

_PLAN_COLUMNS: Final[tuple[Column, ...]] = (
    column("対象年月", "target_month", Month()),
    column("証記載保険者番号", "certificate_insurer_number", PaddedInsurer()),
    column("事業所番号（居宅介護支援事業所）", "support_office", Maybe(Digits(10))),
    column("給付管理票情報作成区分コード", "creation_kind", Code(CreationKind)),
    column("給付管理票作成年月日", "created_on", Date()),
    column("給付管理票種別区分コード", None, Fixed("3")),
    column("給付管理票明細行番号", "line_number", Digits(2)),
    column("被保険者番号", "insured_number", Digits(10)),
    column("被保険者生年月日", "birth_date", Date()),
    column("性別コード", "sex", Code(Sex)),
    column("要介護状態区分コード", "care_level", Code(CareLevel)),
    column("限度額適用期間（開始）", "limit_start", Month()),
    column("限度額適用期間（終了）", "limit_end", Month()),
    column("居宅サービス区分支給限度基準額", "limit_units", Maybe(Number(6))),
    column("居宅サービス計画作成区分コード", "plan_maker", Code(PlanMaker)),
    column("事業所番号（サービス事業所）", "provider_number", Maybe(Digits(10))),
    column("指定/基準該当等事業所区分コード", "provider_kind", Maybe(Code(ProviderKind))),
    column("サービス種類コード", "service_type", Maybe(ServiceType())),
    column("給付計画単位数", "units", Maybe(Number(6))),
    column("前月までの給付計画日数", None, Empty()),
    column("指定サービス分小計", "designated_units", Maybe(Number(7))),
    column("基準該当サービス分小計", "standard_units", Maybe(Number(7))),
    column("給付計画合計単位数", "total_units", Maybe(Number(7))),
)

_REIMBURSEMENT_COLUMNS: Final[tuple[Column, ...]] = (
    column("給付実績情報作成区分コード", "creation_kind", Code(CreationKind)),
    column("整理番号", "reference_number", Digits(10)),
    column("サービス提供年月", "service_month", Month()),
    column("証記載保険者番号", "certificate_insurer_number", InsurerNumber()),
    column("被保険者番号", "insured_number", Digits(10)),
    column("事業所番号", "provider_number", Digits(10)),
    column("サービス種類コード", "service_type", ServiceType()),
    column("単位数", "units", Number(9)),
    column("保険給付額", "benefit_amount", Number(9)),
    column("利用者負担額", "copayment", Number(9)),
    column("支給決定年月日", "decided_on", Date()),
)

_REQUEST_COLUMNS: Final[tuple[Column, ...]] = (
    column("通知内容コード", None, Fixed("01")),
    column("特別徴収義務者コード", "obligor_code", Digits(3)),
    column("各種区分", "request_kind", Code(CollectionRequestKind)),
    column("基礎年金番号", "pension_number", Digits(10)),
    column("年金コード", "pension_code", Digits(4)),
    column("被保険者番号", "insured_number", Digits(10)),
    column("生年月日", "birth_date", Date()),
    column("性別", "sex", Code(Sex)),
    column("カナ氏名", "name_kana", Kana(25)),
    column("賦課年度", "fiscal_year", Year()),
    column("特別徴収開始年月", "start_month", Month()),
    column("金額1", "amount_1", Number(10)),
    column("金額2", "amount_2", Number(10)),
    column("金額3", "amount_3", Number(10)),
)

_RESULT_COLUMNS: Final[tuple[Column, ...]] = (
    column("通知内容コード", None, Fixed("22")),
    column("特別徴収義務者コード", "obligor_code", Digits(3)),
    column("各種区分", "result_kind", Code(CollectionResultKind)),
    column("基礎年金番号", "pension_number", Digits(10)),
    column("年金コード", "pension_code", Digits(4)),
    column("被保険者番号", "insured_number", Digits(10)),
    column("賦課年度", "fiscal_year", Year()),
    column("各種年月日", "result_on", Date()),
    column("金額1", "amount_1", Number(10)),
    column("金額2", "amount_2", Number(10)),
    column("金額3", "amount_3", Number(10)),
    column("依頼ファイル管理番号", "request_file_management_number", Digits(10)),
    column("依頼レコード番号", "request_record_number", Number(10, minimum=2)),
)


# --------------------------------------------------------------------------- rules per row


def _rule(condition: bool, message: str, field: str) -> list[KokuhorenCsvError]:
    return [] if condition else [CsvFieldError(message, field=field)]


def _check_plan_row(row: _PlanRow, month: YearMonth | None) -> list[KokuhorenCsvError]:
    errors: list[KokuhorenCsvError] = []
    errors += _rule(row.care_level.is_certified, "must be 要支援 or 要介護", "要介護状態区分コード")
    errors += _rule(
        row.limit_start <= row.limit_end,
        "限度額適用期間 ends before it starts",
        "限度額適用期間（終了）",
    )
    errors += _rule(
        row.limit_start <= row.target_month <= row.limit_end,
        "対象年月 is outside 限度額適用期間",
        "対象年月",
    )
    errors += _rule(
        (row.support_office is None) == (row.plan_maker is PlanMaker.SELF),
        "事業所番号 is given exactly when the plan is not 自己作成",
        "事業所番号（居宅介護支援事業所）",
    )
    if month is not None:
        errors += _rule(row.target_month <= month, "対象年月 is after 処理対象年月", "対象年月")
    detail = row.line_number != TERMINAL_LINE
    if detail and not ("01" <= row.line_number <= f"{MAX_PLAN_LINES:02d}"):
        errors.append(CsvFieldError("明細行番号 must be 01-98 or 99", field="給付管理票明細行番号"))
    for attr, name in (
        ("provider_number", "事業所番号（サービス事業所）"),
        ("provider_kind", "指定/基準該当等事業所区分コード"),
        ("service_type", "サービス種類コード"),
        ("units", "給付計画単位数"),
    ):
        present = getattr(row, attr) is not None
        errors += _rule(present == detail, "given on 明細行 only, not on the 終端行", name)
    for attr, name in (
        ("limit_units", "居宅サービス区分支給限度基準額"),
        ("designated_units", "指定サービス分小計"),
        ("standard_units", "基準該当サービス分小計"),
        ("total_units", "給付計画合計単位数"),
    ):
        present = getattr(row, attr) is not None
        errors += _rule(present != detail, "given on the 終端行 only", name)
    return errors


def _check_reimbursement(row: Reimbursement, month: YearMonth | None) -> list[KokuhorenCsvError]:
    errors = _rule(
        row.benefit_amount + row.copayment == row.units * UNIT_PRICE_YEN,
        f"保険給付額 and 利用者負担額 must add up to 単位数 × {UNIT_PRICE_YEN} 円",
        "利用者負担額",
    )
    errors += _rule(
        row.decided_on >= date(row.service_month.year, row.service_month.month, 1),
        "支給決定年月日 is before サービス提供年月",
        "支給決定年月日",
    )
    if month is not None:
        errors += _rule(
            row.service_month <= month, "サービス提供年月 is after 処理対象年月", "サービス提供年月"
        )
    return errors


def _check_request(row: CollectionRequest, month: YearMonth | None) -> list[KokuhorenCsvError]:
    amounts = (row.amount_1, row.amount_2, row.amount_3)
    if row.request_kind is CollectionRequestKind.NOT_TARGET:
        return _rule(all(a == 0 for a in amounts), "must be 0 for 特別徴収非対象者", "金額1")
    return _rule(row.amount_1 > 0, "must be above 0 for a 特別徴収対象者", "金額1")


def _check_result(row: CollectionResult, month: YearMonth | None) -> list[KokuhorenCsvError]:
    return []


# --------------------------------------------------------------------------- flow specs


@dataclass(frozen=True, slots=True)
class FlowSpec(Generic[T]):
    """One flow: its codes, its data record layout, how items map to lines.

    ``to_rows`` gives the wire rows of one item (one, or several for a 給付管理票);
    ``group`` turns consecutive good rows back into items, reporting what does not
    fit (a row that is not part of a complete item makes the item fail).
    """

    name: str
    data_type: str
    exchange_id: str
    direction: str  # "to_kokuhoren" or "to_insurer"
    item_type: type[T]
    row_type: type[Any]
    columns: tuple[Column, ...]
    check: Callable[[Any, YearMonth | None], list[KokuhorenCsvError]]
    to_rows: Callable[[T], list[Any]]
    group: Callable[[list[tuple[int, Any]], Collector], list[NumberedItem[T]]]

    @property
    def control_columns(self) -> tuple[Column, ...]:
        return _control_columns(self.data_type)

    @property
    def data_columns(self) -> tuple[Column, ...]:
        return (
            column(_KIND, None, Fixed("2")),
            column(_NUMBER, None, _NUMBER_CODEC),
            column(_EXCHANGE, None, Fixed(self.exchange_id)),
            *self.columns,
        )


def _single(item: T) -> list[Any]:
    return [item]


def _ungrouped(rows: list[tuple[int, Any]], sink: Collector) -> list[NumberedItem[Any]]:
    return [NumberedItem(number, number, row) for number, row in rows]


def _plan_rows(plan: BenefitPlan) -> list[_PlanRow]:
    head = {
        f.name: getattr(plan, f.name)
        for f in fields(_PlanRow)
        if f.name in {g.name for g in fields(BenefitPlan)}
    }
    empty = dict.fromkeys(
        ("limit_units", "designated_units", "standard_units", "total_units"), None
    )
    rows = [
        _PlanRow(
            **(head | empty),
            line_number=f"{n:02d}",
            provider_number=line.provider_number,
            provider_kind=line.provider_kind,
            service_type=line.service_type,
            units=line.units,
        )
        for n, line in enumerate(plan.lines, start=1)
    ]
    rows.append(
        _PlanRow(
            **head,
            line_number=TERMINAL_LINE,
            provider_number=None,
            provider_kind=None,
            service_type=None,
            units=None,
            designated_units=plan.designated_units,
            standard_units=plan.standard_units,
            total_units=plan.total_units,
        )
    )
    return rows


_PLAN_HEAD: Final = tuple(
    f.name for f in fields(BenefitPlan) if f.name not in ("lines", "limit_units")
)


def _plan_of(rows: list[tuple[int, _PlanRow]]) -> BenefitPlan | KokuhorenCsvError:
    first_number, first = rows[0]
    last_number, last = rows[-1]
    if last.line_number != TERMINAL_LINE:
        return CsvStructureError(
            "a 給付管理票 ends with its 終端行 (明細行番号 99)",
            record_number=last_number,
            field="給付管理票明細行番号",
        )
    details = rows[:-1]
    if not details or len(details) > MAX_PLAN_LINES:
        return CsvStructureError(
            f"a 給付管理票 has 1 to {MAX_PLAN_LINES} 明細行",
            record_number=last_number,
            field="給付管理票明細行番号",
        )
    for expected, (number, row) in enumerate(details, start=1):
        if row.line_number != f"{expected:02d}":
            return CsvRecordNumberError(
                f"明細行番号 must be {expected:02d} (numbers run from 01 without gaps)",
                record_number=number,
                field="給付管理票明細行番号",
            )
    for number, row in rows:
        for name in _PLAN_HEAD:
            if getattr(row, name) != getattr(first, name):
                return CsvFieldError(
                    "differs from the first line of the same 給付管理票",
                    record_number=number,
                    field=name,
                )
    assert last.limit_units is not None
    plan = BenefitPlan(
        **{name: getattr(first, name) for name in _PLAN_HEAD},
        limit_units=last.limit_units,
        lines=tuple(
            PlanLine(r.provider_number, r.provider_kind, r.service_type, r.units)  # type: ignore[arg-type]
            for _, r in details
        ),
    )
    for attr, name in (
        ("designated_units", "指定サービス分小計"),
        ("standard_units", "基準該当サービス分小計"),
        ("total_units", "給付計画合計単位数"),
    ):
        if getattr(last, attr) != getattr(plan, attr):
            return CsvCountMismatchError(
                "does not equal the sum of the 明細行", record_number=last_number, field=name
            )
    del first_number
    return plan


def _plan_key(row: _PlanRow) -> tuple[Any, ...]:
    return (row.target_month, row.certificate_insurer_number, row.insured_number)


def _group_plans(
    rows: list[tuple[int, _PlanRow]], sink: Collector
) -> list[NumberedItem[BenefitPlan]]:
    """Consecutive rows of one person and month, closed by a 99 row, make one plan."""
    plans: list[NumberedItem[BenefitPlan]] = []
    current: list[tuple[int, _PlanRow]] = []

    def close() -> None:
        if not current:
            return
        plan = _plan_of(current)
        if isinstance(plan, KokuhorenCsvError):
            sink.add(plan)
        else:
            plans.append(NumberedItem(current[0][0], current[-1][0], plan))
        current.clear()

    previous = 0
    for number, row in rows:
        adjacent = previous == number - 1
        if current and (not adjacent or _plan_key(row) != _plan_key(current[-1][1])):
            close()
        current.append((number, row))
        previous = number
        if row.line_number == TERMINAL_LINE:
            close()
    close()
    return plans


BENEFIT_PLAN: Final[FlowSpec[BenefitPlan]] = FlowSpec(
    name="benefit_plan",
    data_type="821",
    exchange_id="8221",
    direction="to_kokuhoren",
    item_type=BenefitPlan,
    row_type=_PlanRow,
    columns=_PLAN_COLUMNS,
    check=_check_plan_row,
    to_rows=_plan_rows,
    group=_group_plans,
)
REIMBURSEMENT: Final[FlowSpec[Reimbursement]] = FlowSpec(
    name="reimbursement",
    data_type="911",
    exchange_id="9111",
    direction="to_kokuhoren",
    item_type=Reimbursement,
    row_type=Reimbursement,
    columns=_REIMBURSEMENT_COLUMNS,
    check=_check_reimbursement,
    to_rows=_single,
    group=_ungrouped,
)
COLLECTION_REQUEST: Final[FlowSpec[CollectionRequest]] = FlowSpec(
    name="special_collection",
    data_type="951",
    exchange_id="9511",
    direction="to_kokuhoren",
    item_type=CollectionRequest,
    row_type=CollectionRequest,
    columns=_REQUEST_COLUMNS,
    check=_check_request,
    to_rows=_single,
    group=_ungrouped,
)
COLLECTION_RESULT: Final[FlowSpec[CollectionResult]] = FlowSpec(
    name="special_collection_result",
    data_type="952",
    exchange_id="9521",
    direction="to_insurer",
    item_type=CollectionResult,
    row_type=CollectionResult,
    columns=_RESULT_COLUMNS,
    check=_check_result,
    to_rows=_single,
    group=_ungrouped,
)
ALL_FLOWS: Final[tuple[FlowSpec[Any], ...]] = (
    BENEFIT_PLAN,
    REIMBURSEMENT,
    COLLECTION_REQUEST,
    COLLECTION_RESULT,
)


def flow_by_data_type(data_type: str) -> FlowSpec[Any] | None:
    """The flow whose files carry ``data_type``, or None."""
    return next((spec for spec in ALL_FLOWS if spec.data_type == data_type), None)


# --------------------------------------------------------------------------- encoding


def _format(columns: tuple[Column, ...], record: object, number: int) -> list[str]:
    values: list[str] = []
    for col in columns:
        value: object
        if col.attr is not None:
            value = getattr(record, col.attr)
        elif col.name == _NUMBER:
            value = number
        elif col.name == _PREFECTURE:
            value = getattr(record, "insurer_number", "")[:2]
        elif isinstance(col.codec, Fixed):
            value = col.codec.constant
        else:
            value = None
        try:
            values.append(col.codec.format(value, col.name))
        except KokuhorenCsvError as exc:
            raise exc.located(number) from None
    return values


def _encode_line(values: list[str], number: int) -> bytes:
    try:
        return (join_values(values) + "\r\n").encode("cp932")
    except UnicodeEncodeError:
        raise CsvFieldError(
            "value cannot be encoded in Shift_JIS (CP932)", record_number=number
        ) from None


def encode_flow_file(
    spec: FlowSpec[T], control: FlowControl, items: Iterable[T], limits: CsvLimits = DEFAULT_LIMITS
) -> bytes:
    """The bytes of a file of ``spec``: レコード件数 is set from the rows written.

    Raises a :class:`KokuhorenCsvError` (record number and item) for anything the
    decoder would refuse: the strict decoder reads the output back.
    """
    rows = [row for item in items for row in spec.to_rows(item)]
    control = replace(control, record_count=len(rows))
    parts = [_encode_line(_format(spec.control_columns, control, 1), 1)]
    for number, row in enumerate(rows, start=2):
        parts.append(_encode_line(_format(spec.data_columns, row, number), number))
    parts.append(_encode_line(_format(_END_COLUMNS, None, len(rows) + 2), len(rows) + 2))
    content = b"".join(parts)
    decode_flow_file(spec, content, limits)
    return content


# --------------------------------------------------------------------------- decoding


def _parse_values(
    columns: tuple[Column, ...], values: Sequence[str], number: int
) -> tuple[dict[str, Any] | None, list[KokuhorenCsvError]]:
    def check(col: Column, value: Any) -> KokuhorenCsvError | None:
        if col.name == _NUMBER and value != number:
            return CsvRecordNumberError(
                f"レコード番号 must be {number} (numbers run from 1 without gaps)",
                record_number=number,
                field=_NUMBER,
            )
        return None

    fields, errors = parse_columns(columns, values, number, check)
    if errors:
        return None, errors
    parsed: dict[str, Any] = {}
    for col, value in fields:
        if col.attr is not None:
            parsed[col.attr] = value
        elif col.name == _PREFECTURE:
            parsed[_PREFECTURE] = value
    return parsed, errors


def _decode(
    spec: FlowSpec[T], data: bytes, limits: CsvLimits, *, strict: bool
) -> FlowDecodeResult[T]:
    sink = Collector(strict=strict, max_errors=limits.max_errors)
    control: FlowControl | None = None
    items: list[NumberedItem[T]] = []
    data_lines = 0
    try:
        lines, terminated = split_lines(data, limits)
        last = len(lines)
        if not terminated:
            sink.add(CsvStructureError("the last line does not end with CRLF", record_number=last))
        rows: list[tuple[int, Any]] = []
        has_end = False
        for number, raw in enumerate(lines, start=1):
            try:
                values = line_values(raw, number, limits)
            except KokuhorenCsvError as exc:
                sink.add(exc)
                continue
            kind = values[0]
            expected = "1" if number == 1 else ("3" if number == last else "2")
            if kind != expected:
                sink.add(
                    CsvStructureError(
                        "records must be one control record (1), data records (2), "
                        "one end record (3)",
                        record_number=number,
                        field=_KIND,
                    )
                )
                continue
            if kind == "1":
                parsed, errors = _parse_values(spec.control_columns, values, number)
                for error in errors:
                    sink.add(error)
                if parsed is not None:
                    prefecture = parsed.pop(_PREFECTURE)
                    control = FlowControl(**parsed)
                    if prefecture != control.insurer_number[:2]:
                        sink.add(
                            CsvFieldError(
                                "都道府県番号 does not match 保険者番号",
                                record_number=1,
                                field=_PREFECTURE,
                            )
                        )
                continue
            if kind == "3":
                has_end = True
                for error in _parse_values(_END_COLUMNS, values, number)[1]:
                    sink.add(error)
                continue
            data_lines += 1
            if len(values) >= 3 and values[2] != spec.exchange_id:
                sink.add(
                    CsvUnknownCodeError(
                        f"交換情報識別番号 must be {spec.exchange_id} in a "
                        f"データ種別 {spec.data_type} file",
                        record_number=number,
                        field=_EXCHANGE,
                    )
                )
                continue
            parsed, errors = _parse_values(spec.data_columns, values, number)
            for error in errors:
                sink.add(error)
            if parsed is None:
                continue
            row = spec.row_type(**parsed)
            month = control.processing_month if control is not None else None
            row_errors = spec.check(row, month)
            for error in row_errors:
                sink.add(error.located(number))
            if not row_errors:
                rows.append((number, row))
        if not has_end:
            sink.add(CsvStructureError("the file does not end with an end record (レコード種別 3)"))
        if control is not None and control.record_count != data_lines:
            sink.add(
                CsvCountMismatchError(
                    f"レコード件数 is {control.record_count} but the file has "
                    f"{data_lines} data records",
                    record_number=1,
                    field=_COUNT,
                )
            )
        items = spec.group(rows, sink)
    except StopDecodingError:
        pass
    except KokuhorenCsvError as exc:
        if strict:
            raise
        sink.errors.append(exc)
    return FlowDecodeResult(
        control=control,
        items=tuple(items),
        errors=tuple(RecordError.of(error) for error in sink.errors),
        record_count=data_lines,
    )


def decode_flow_records(
    spec: FlowSpec[T], data: bytes, limits: CsvLimits = DEFAULT_LIMITS
) -> FlowDecodeResult[T]:
    """Every good item of ``data`` and one error per defect; never raises for bad input.

    Errors are bounded by ``limits.max_errors`` (then one ``csv_limit`` error says
    decoding stopped). An item is good when all its lines are.
    """
    return _decode(spec, data, limits, strict=False)


def decode_flow_file(
    spec: FlowSpec[T], data: bytes, limits: CsvLimits = DEFAULT_LIMITS
) -> FlowFile[T]:
    """The file in ``data``; raises the first :class:`KokuhorenCsvError` found."""
    result = _decode(spec, data, limits, strict=True)
    if result.control is None:  # pragma: no cover - strict decoding raised already
        raise CsvStructureError("the file has no readable control record", record_number=1)
    return FlowFile(result.control, tuple(item.item for item in result.items))


# --------------------------------------------------------------------------- file names

_FILE_NAME: Final = re.compile(r"10_([0-9]{3})([0-9]{6})([0-9]{6})\.csv")


def flow_file_name(spec: FlowSpec[Any], insurer_number: str, processing_month: YearMonth) -> str:
    """``10_{データ種別}{保険者番号}{YYYYMM}.csv`` (the 531 file's naming)."""
    if not isinstance(insurer_number, str) or not is_valid_insurer_number(insurer_number):
        raise CsvFileNameError("保険者番号 must be 6 digits with a valid check digit")
    return f"10_{spec.data_type}{insurer_number}{processing_month}.csv"


def parse_flow_file_name(name: str) -> tuple[FlowSpec[Any], str, YearMonth]:
    """Flow, 保険者番号 and 処理対象年月 of a file name; refuses anything else."""
    matched = _FILE_NAME.fullmatch(name)
    spec = flow_by_data_type(matched.group(1)) if matched else None
    if matched is None or spec is None or not is_valid_insurer_number(matched.group(2)):
        raise CsvFileNameError("file name must be 10_{821|911|951|952}{保険者番号}{YYYYMM}.csv")
    month = matched.group(3)
    try:
        return spec, matched.group(2), YearMonth(int(month[:4]), int(month[4:]))
    except ValueError:
        raise CsvFileNameError("処理対象年月 in the file name is not a real month") from None
