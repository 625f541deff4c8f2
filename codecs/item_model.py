"""Typed values of the 介護保険 information items (特定個人情報) that 千葉市 provides.

One frozen dataclass per item kind and per repeating group; the XSDs beside the code
(``codecs/xsd/item_*.xsd``) are the wire contract and ``chukan.codecs.items`` maps
between the two. The mapping is by convention, checked by the unit tests against the
XSDs: a leaf element is named by the PascalCase of its field (``loss_date`` →
``LossDate``), a repeating group by its dataclass name, an item root by its item
dataclass name, and a group's ``updated`` field is its ``TimeAndDateOfUpdate``.

An empty value (``xsi:nil="true"``) is a :class:`Nil` carrying its ``ReasonOfNull``,
so a field typed ``Nillable[date]`` holds either a date or the reason it has none.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date
from typing import NewType, TypeAlias, TypeVar

T = TypeVar("T")

#: 被保険者番号: 10 digits.
InsuredNumber = NewType("InsuredNumber", str)
#: 保険者番号 (介護保険): 6 digits.
InsurerNumber = NewType("InsurerNumber", str)
#: 事業所番号: 10 characters, digits or capital letters.
ProviderNumber = NewType("ProviderNumber", str)
#: サービス種類コード: 2 characters, digits or capital letters.
ServiceTypeCode = NewType("ServiceTypeCode", str)
#: 特定疾病コード: 01 to 16 (the municipality-independent list of 16 diseases).
SpecificDiseaseCode = NewType("SpecificDiseaseCode", str)
#: 所得区分コード (保険料段階): 01 to 20; how many 段階 exist is set by each municipality.
IncomeCategoryCode = NewType("IncomeCategoryCode", str)
#: 賦課年度 (fiscal year, 1 to 9999).
FiscalYear = NewType("FiscalYear", int)
#: An amount in yen: whole, 0 to 999,999,999,999.
Yen = NewType("Yen", int)
#: 単位数 (care fee units): 0 to 99,999,999.
Units = NewType("Units", int)
#: 受給者履歴通番 (a certification record's number in the core system): 1 to 9,999.
HistoryNumber = NewType("HistoryNumber", int)
#: 特別徴収義務者コード (the 年金保険者 that deducts the premium): 3 digits.
ObligorCode = NewType("ObligorCode", str)
#: 年金コード (the kind of pension the premium is deducted from): 4 digits.
PensionCode = NewType("PensionCode", str)

#: A field added to an item after its first layout (SPIMajorVersion stays 1): an optional
#: element, ``None`` when absent, so that items stored before it was added stay valid and
#: keep their canonical bytes (see docs/replica.md, "Items and fields").
Optional: TypeAlias = T | None


class ReasonOfNull(enum.Enum):
    """Why a value is empty (``ReasonOfNull`` beside ``xsi:nil``)."""

    NOT_APPLICABLE = "1"  # 該当なし: there is nothing to record (e.g. not lost yet)
    UNKNOWN = "2"  # 不明
    NOT_RECORDED = "3"  # 未登録: the core system has no value yet
    OTHER = "9"  # その他


@dataclass(frozen=True, slots=True)
class Nil:
    """An empty value: the wire says ``xsi:nil="true"`` and this reason."""

    reason: ReasonOfNull


#: A value or the reason it is empty.
Nillable: TypeAlias = T | Nil


@dataclass(frozen=True, slots=True, order=True)
class YearMonth:
    """A calendar month (サービス提供年月); the standard library has no such type."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not 1 <= self.year <= 9999 or not 1 <= self.month <= 12:
            raise ValueError("year must be 1..9999 and month 1..12")

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


# --------------------------------------------------------------------- codes


class InsuredCategory(enum.Enum):
    """被保険者区分."""

    FIRST = "1"  # 第1号被保険者 (65歳以上)
    SECOND = "2"  # 第2号被保険者 (40〜64歳の医療保険加入者)


class AcquisitionReason(enum.Enum):
    """資格取得事由."""

    AGE_65 = "01"  # 年齢到達 (65歳)
    SECOND_CATEGORY = "02"  # 第2号被保険者該当
    MOVED_IN = "03"  # 転入
    EXCLUSION_ENDED = "04"  # 適用除外非該当
    FOREIGN_RESIDENT = "05"  # 外国人住民の住民登録
    OTHER = "99"  # その他


class LossReason(enum.Enum):
    """資格喪失事由."""

    DEATH = "01"  # 死亡
    MOVED_OUT = "02"  # 転出
    EXCLUDED = "03"  # 適用除外該当
    SECOND_CATEGORY_ENDED = "04"  # 第2号被保険者非該当 (医療保険離脱)
    OTHER = "99"  # その他


class ExclusionFacility(enum.Enum):
    """適用除外施設種別."""

    DISABILITY_SUPPORT = "1"  # 障害者支援施設
    MEDICAL_CHILD = "2"  # 医療型障害児入所施設
    MEDICAL_CARE = "3"  # 療養介護事業所
    OTHER = "9"  # その他


class AddressExceptionFacility(enum.Enum):
    """住所地特例対象施設種類."""

    CARE_INSURANCE_FACILITY = "1"  # 介護保険施設
    SPECIFIED_FACILITY = "2"  # 特定施設 (有料老人ホーム等)
    NURSING_HOME = "3"  # 養護老人ホーム
    OTHER = "9"  # その他


class CareLevel(enum.StrEnum):
    """要介護状態区分コード, one code list for the items and the 国保連 CSV files.

    A string enum, as the CSV codec writes members as their codes; in a 国保連
    record an empty value (``None``) means 非認定.
    """

    NOT_APPLICABLE = "01"  # 非該当
    SUPPORT_1 = "12"  # 要支援1
    SUPPORT_2 = "13"  # 要支援2
    CARE_1 = "21"  # 要介護1
    CARE_2 = "22"  # 要介護2
    CARE_3 = "23"  # 要介護3
    CARE_4 = "24"  # 要介護4
    CARE_5 = "25"  # 要介護5

    @property
    def is_certified(self) -> bool:
        """要支援 or 要介護: the levels that come with a 認定有効期間."""
        return self is not CareLevel.NOT_APPLICABLE


class ApplicationReason(enum.Enum):
    """申請事由 (申請区分)."""

    NEW = "1"  # 新規申請
    RENEWAL = "2"  # 更新申請
    LEVEL_CHANGE = "3"  # 区分変更申請
    EX_OFFICIO = "4"  # 職権
    MOVED_IN = "5"  # 転入 (法第36条)


class DeemedCertification(enum.Enum):
    """みなし認定区分."""

    REGULAR = "0"  # 通常の認定
    MOVED_IN = "1"  # 転入に伴うみなし認定 (法第36条)
    OTHER = "2"  # その他のみなし認定


class BurdenRatioCode(enum.Enum):
    """負担割合 (1割, 2割, 3割)."""

    ONE_TENTH = "1"
    TWO_TENTHS = "2"
    THREE_TENTHS = "3"


class CollectionMethod(enum.Enum):
    """徴収方法区分コード."""

    SPECIAL = "1"  # 特別徴収 (年金天引き)
    ORDINARY = "2"  # 普通徴収
    COMBINED = "3"  # 併用


class Reduction(enum.Enum):
    """減免区分; no reduction is ``Nil(ReasonOfNull.NOT_APPLICABLE)``."""

    DISASTER = "1"  # 災害
    INCOME_LOSS = "2"  # 失業等による収入減少
    DETENTION = "3"  # 刑事施設等への拘禁
    OTHER = "9"  # その他


class WithdrawalReason(enum.Enum):
    """受給者申請取消事由コード (chukan's code list; the real one is the vendor's)."""

    BY_APPLICANT = "1"  # 本人・家族からの取下げ
    DEATH = "2"  # 死亡
    MOVED_OUT = "3"  # 転出
    OTHER = "9"  # その他


class SuspensionReason(enum.Enum):
    """受給者認定中断事由コード (chukan's code list)."""

    HOSPITALISED = "1"  # 入院等で調査・審査ができない
    DEATH = "2"  # 死亡
    MOVED_OUT = "3"  # 転出
    OTHER = "9"  # その他


class CancellationReason(enum.Enum):
    """受給者認定取消事由コード (chukan's codes for the grounds of 介護保険法第31条・第34条)."""

    NO_LONGER_ELIGIBLE = "1"  # 要介護者・要支援者に該当しなくなった
    REFUSED_EXAMINATION = "2"  # 正当な理由なく調査・診断命令に従わない
    QUALIFICATION_LOST = "3"  # 資格喪失 (死亡・転出)
    OTHER = "9"  # その他


class SpecialCollectionStop(enum.Enum):
    """特別徴収中止事由 (chukan's code list)."""

    DEATH = "1"  # 死亡
    MOVED_OUT = "2"  # 転出
    ASSESSMENT_CHANGED = "3"  # 賦課額の変更 (減額更正)
    PENSION_STOPPED = "4"  # 年金の支給停止・差止
    OTHER = "9"  # その他


class Deferral(enum.Enum):
    """納付原簿徴収猶予区分コード (chukan's codes for the grounds of 介護保険法第142条)."""

    DISASTER = "1"  # 災害
    INCOME_LOSS = "2"  # 事業の休廃止・失業等による収入減少
    OTHER = "9"  # その他


class PaymentStatus(enum.Enum):
    """収滞納状況 of one 賦課年度 (chukan's code list)."""

    PAID = "1"  # 完納
    PARTLY_PAID = "2"  # 一部納付
    IN_ARREARS = "3"  # 滞納
    INSTALMENTS = "4"  # 分納中
    NOT_DUE = "5"  # 納期未到来


class EligibilityEndReason(enum.Enum):
    """事業対象者 終了事由 (chukan's code list)."""

    CERTIFIED = "1"  # 要介護・要支援認定
    DEATH = "2"  # 死亡
    MOVED_OUT = "3"  # 転出
    QUALIFICATION_LOST = "4"  # その他の資格喪失
    OTHER = "9"  # その他


# ------------------------------------------------------- 0101 被保険者資格


@dataclass(frozen=True, slots=True)
class QualificationRecord:
    """資格履歴: one period of insured status (repeating group)."""

    updated: date
    insured_category: InsuredCategory
    acquisition_date: date
    acquisition_reason: Nillable[AcquisitionReason]
    loss_date: Nillable[date]
    loss_reason: Nillable[LossReason]


@dataclass(frozen=True, slots=True)
class ExclusionRecord:
    """適用除外履歴: a period outside the scheme (repeating group)."""

    updated: date
    exclusion_start_date: date
    exclusion_end_date: Nillable[date]
    exclusion_facility: Nillable[ExclusionFacility]


@dataclass(frozen=True, slots=True)
class InsuredQualification:
    """被保険者資格 (data set 0101)."""

    insured_number: InsuredNumber
    insurer_number: InsurerNumber
    qualification_records: tuple[QualificationRecord, ...]
    exclusion_records: tuple[ExclusionRecord, ...] = ()


# ------------------------------------------------------- 0102 住所地特例


@dataclass(frozen=True, slots=True)
class AddressExceptionRecord:
    """住所地特例履歴 (repeating group)."""

    updated: date
    start_date: date
    change_date: Nillable[date]
    end_date: Nillable[date]
    facility_insurer_number: InsurerNumber
    facility_type: Nillable[AddressExceptionFacility]


@dataclass(frozen=True, slots=True)
class AddressException:
    """住所地特例 (data set 0102)."""

    insured_number: InsuredNumber
    insurer_number: InsurerNumber
    address_exception_records: tuple[AddressExceptionRecord, ...]


# ------------------------------------------------ 0201 受給者基本・認定


@dataclass(frozen=True, slots=True)
class CertificationRecord:
    """認定履歴: one application and its outcome (repeating group)."""

    updated: date
    application_date: date
    application_reason: ApplicationReason
    certification_date: Nillable[date]
    care_level: Nillable[CareLevel]
    valid_from: Nillable[date]
    valid_to: Nillable[date]
    specific_disease: Nillable[SpecificDiseaseCode]
    deemed_certification: DeemedCertification
    #: 受給者履歴通番: this record's number in the core system (区分変更 history refers to it).
    history_number: Optional[HistoryNumber] = None
    #: 区分変更前回受給者履歴通番: the record a 区分変更 (or other change of level) replaced.
    previous_history_number: Optional[HistoryNumber] = None
    #: 区分変更前の要介護状態区分: the level before the change.
    previous_care_level: Optional[CareLevel] = None
    #: 支給限度管理期間 (区分支給限度基準額の管理期間) 開始/終了年月日.
    limit_period_from: Optional[date] = None
    limit_period_to: Optional[date] = None
    #: 申請取消年月日 and 受給者申請取消事由コード: the application was withdrawn.
    withdrawal_date: Optional[date] = None
    withdrawal_reason: Optional[WithdrawalReason] = None
    #: 認定中断年月日 and 受給者認定中断事由コード: the procedure stopped before a decision.
    suspension_date: Optional[date] = None
    suspension_reason: Optional[SuspensionReason] = None
    #: 認定取消年月日 and 受給者認定取消事由コード (介護保険法第31条・第34条).
    cancellation_date: Optional[date] = None
    cancellation_reason: Optional[CancellationReason] = None


@dataclass(frozen=True, slots=True)
class CareCertification:
    """受給者基本情報・要介護認定 (data set 0201)."""

    insured_number: InsuredNumber
    insurer_number: InsurerNumber
    certification_records: tuple[CertificationRecord, ...]


# ------------------------------------------------------------ 0202 負担割合


@dataclass(frozen=True, slots=True)
class BurdenRatioRecord:
    """負担割合履歴 (repeating group)."""

    updated: date
    ratio: BurdenRatioCode
    valid_from: date
    valid_to: Nillable[date]


@dataclass(frozen=True, slots=True)
class BurdenRatio:
    """負担割合 (data set 0202)."""

    insured_number: InsuredNumber
    insurer_number: InsurerNumber
    burden_ratio_records: tuple[BurdenRatioRecord, ...]


# ---------------------------------------------------------------- 0300 給付


@dataclass(frozen=True, slots=True)
class BenefitRecord:
    """給付実績: one service kind in one month (repeating group)."""

    updated: date
    service_month: YearMonth
    service_type: ServiceTypeCode
    provider_number: Nillable[ProviderNumber]
    units: Nillable[Units]
    benefit_amount: Yen
    user_burden: Nillable[Yen]


@dataclass(frozen=True, slots=True)
class Benefit:
    """給付 (data set 0300)."""

    insured_number: InsuredNumber
    insurer_number: InsurerNumber
    benefit_records: tuple[BenefitRecord, ...]


# ---------------------------------------------------------------- 0500 賦課


@dataclass(frozen=True, slots=True)
class AssessmentRecord:
    """賦課履歴: one 賦課年度 (or one 更正 of it) (repeating group)."""

    updated: date
    fiscal_year: FiscalYear
    income_category: IncomeCategoryCode
    collection_method: CollectionMethod
    assessed_amount: Yen
    annual_amount: Yen
    reduction: Nillable[Reduction]
    #: 納付原簿特別徴収義務者コード and 納付原簿年金コード (特別徴収: the pension deducted from).
    obligor_code: Optional[ObligorCode] = None
    pension_code: Optional[PensionCode] = None
    #: 特別徴収中止事由: why deduction from the pension stopped.
    special_collection_stop: Optional[SpecialCollectionStop] = None
    #: 仮徴収額 (the amount deducted per payment in April, June and August) and the date
    #: it was last changed (納付原簿仮徴収額変更年月日).
    provisional_amount: Optional[Yen] = None
    provisional_change_date: Optional[date] = None
    #: 納付原簿徴収猶予区分コード and the 徴収猶予 period (介護保険法第142条).
    deferral: Optional[Deferral] = None
    deferral_from: Optional[date] = None
    deferral_to: Optional[date] = None
    #: 収滞納: payment status of the 賦課年度 on ``payment_status_date``, and the amount due
    #: and not paid (滞納額).
    payment_status: Optional[PaymentStatus] = None
    arrears_amount: Optional[Yen] = None
    payment_status_date: Optional[date] = None


@dataclass(frozen=True, slots=True)
class PremiumAssessment:
    """賦課 / 保険料賦課根拠 (data set 0500)."""

    insured_number: InsuredNumber
    insurer_number: InsurerNumber
    assessment_records: tuple[AssessmentRecord, ...]


# ------------------------------------------ 0400 介護予防・日常生活支援総合事業


@dataclass(frozen=True, slots=True)
class ProgramEligibilityRecord:
    """事業対象者履歴: one period as 事業対象者 (基本チェックリスト該当) (repeating group)."""

    updated: date
    #: 基本チェックリスト実施年月日.
    checklist_date: date
    #: 受付年月日 and 決定年月日 of the 事業対象者 determination.
    accepted_date: Nillable[date]
    decision_date: Nillable[date]
    #: 適用開始年月日 / 適用終了年月日.
    valid_from: date
    valid_to: Nillable[date]
    end_reason: Nillable[EligibilityEndReason]
    #: 介護予防ケアマネジメント依頼届出 of the 地域包括支援センター (its 事業所番号).
    care_management_provider: Nillable[ProviderNumber]


@dataclass(frozen=True, slots=True)
class ProgramServiceRecord:
    """第1号事業 (介護予防・生活支援サービス事業) use of one kind in one month (repeating group)."""

    updated: date
    service_month: YearMonth
    #: サービス種類コード of the 第1号事業 (A1–A9, AF …).
    service_type: ServiceTypeCode
    provider_number: Nillable[ProviderNumber]
    units: Nillable[Units]
    #: 第1号事業支給費 (yen).
    benefit_amount: Yen
    user_burden: Nillable[Yen]


@dataclass(frozen=True, slots=True)
class ComprehensiveProgram:
    """介護予防・日常生活支援総合事業 (data set 0400)."""

    insured_number: InsuredNumber
    insurer_number: InsurerNumber
    program_eligibility_records: tuple[ProgramEligibilityRecord, ...] = ()
    program_service_records: tuple[ProgramServiceRecord, ...] = ()


#: Any item value that :func:`chukan.codecs.items.encode_item` accepts.
Item: TypeAlias = (
    InsuredQualification
    | AddressException
    | CareCertification
    | BurdenRatio
    | Benefit
    | ComprehensiveProgram
    | PremiumAssessment
)
