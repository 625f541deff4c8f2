"""Synthetic replica items for the demo, tests and benchmarks (never real data).

The 介護保険 items are real typed values of :mod:`chukan.codecs.item_model`,
encoded with :func:`chukan.codecs.items.encode_item` (so they validate against
their XSDs and are already in canonical form: the bytes the gateway stores).
``local_tax_item`` stands for an item of another business (地方税, provided by
another municipality to 千葉市) whose layout this project does not model.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Final

from lxml import etree

from . import item_model as m
from .items import ITEM_CODES, encode_item

LOCAL_TAX_NS = "urn:chukan:item:local-tax:1"
#: A synthetic 保険者番号 (real ones are public, but nothing here should look real).
SAMPLE_INSURER: Final = m.InsurerNumber("129999")

_NA: Final = m.Nil(m.ReasonOfNull.NOT_APPLICABLE)


def _serialise(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def local_tax_item(rng: random.Random, today: dt.date) -> bytes:
    """地方税関係情報（所得・課税）as another municipality would provide it (項 131)."""
    root = etree.Element(f"{{{LOCAL_TAX_NS}}}LocalTaxIncome", nsmap={None: LOCAL_TAX_NS})  # type: ignore[dict-item]
    root.set("Version", "1")
    etree.SubElement(root, f"{{{LOCAL_TAX_NS}}}TaxYear").text = str(today.year - 1)
    etree.SubElement(root, f"{{{LOCAL_TAX_NS}}}TotalIncome").text = str(
        rng.randrange(800_000, 6_000_000, 1000)
    )
    etree.SubElement(root, f"{{{LOCAL_TAX_NS}}}TaxableStatus").text = rng.choice(["1", "2"])
    return _serialise(root)


def insured_number(rng: random.Random) -> m.InsuredNumber:
    """A synthetic 被保険者番号 (10 digits)."""
    return m.InsuredNumber("".join(rng.choice("0123456789") for _ in range(10)))


def _years_ago(today: dt.date, years: int) -> dt.date:
    return today.replace(year=today.year - years, day=min(today.day, 28))


def care_certification(
    rng: random.Random, today: dt.date, insured: m.InsuredNumber | None = None
) -> m.CareCertification:
    """受給者基本情報・要介護認定 (0201): one certification valid for a year from ``today``."""
    applied = today - dt.timedelta(days=rng.randint(20, 40))
    valid_to = today.replace(year=today.year + 1, day=min(today.day, 28)) - dt.timedelta(days=1)
    record = m.CertificationRecord(
        updated=today,
        application_date=applied,
        application_reason=rng.choice(list(m.ApplicationReason)),
        certification_date=today,
        care_level=rng.choice([level for level in m.CareLevel if level.value != "01"]),
        valid_from=today,
        valid_to=valid_to,
        specific_disease=_NA,
        deemed_certification=m.DeemedCertification.REGULAR,
        history_number=m.HistoryNumber(1),
        limit_period_from=today,
        limit_period_to=valid_to,
    )
    return m.CareCertification(insured or insured_number(rng), SAMPLE_INSURER, (record,))


def insured_qualification(
    rng: random.Random, today: dt.date, insured: m.InsuredNumber | None = None
) -> m.InsuredQualification:
    record = m.QualificationRecord(
        today,
        m.InsuredCategory.FIRST,
        _years_ago(today, rng.randint(1, 20)),
        m.AcquisitionReason.AGE_65,
        _NA,
        _NA,
    )
    return m.InsuredQualification(insured or insured_number(rng), SAMPLE_INSURER, (record,))


def address_exception(
    rng: random.Random, today: dt.date, insured: m.InsuredNumber | None = None
) -> m.AddressException:
    record = m.AddressExceptionRecord(
        today,
        _years_ago(today, rng.randint(1, 5)),
        _NA,
        _NA,
        m.InsurerNumber("128888"),
        m.AddressExceptionFacility.SPECIFIED_FACILITY,
    )
    return m.AddressException(insured or insured_number(rng), SAMPLE_INSURER, (record,))


def burden_ratio(
    rng: random.Random, today: dt.date, insured: m.InsuredNumber | None = None
) -> m.BurdenRatio:
    record = m.BurdenRatioRecord(today, rng.choice(list(m.BurdenRatioCode)), today, _NA)
    return m.BurdenRatio(insured or insured_number(rng), SAMPLE_INSURER, (record,))


def benefit(
    rng: random.Random, today: dt.date, insured: m.InsuredNumber | None = None
) -> m.Benefit:
    units = rng.randint(100, 30_000)
    record = m.BenefitRecord(
        today,
        m.YearMonth(today.year, today.month),
        m.ServiceTypeCode(rng.choice(["11", "13", "15", "21", "43"])),
        _NA,
        m.Units(units),
        m.Yen(units * 9),
        m.Yen(units),
    )
    return m.Benefit(insured or insured_number(rng), SAMPLE_INSURER, (record,))


def premium_assessment(
    rng: random.Random, today: dt.date, insured: m.InsuredNumber | None = None
) -> m.PremiumAssessment:
    amount = m.Yen(rng.randrange(20_000, 200_000, 100))
    method = rng.choice(list(m.CollectionMethod))
    deducted = method is not m.CollectionMethod.ORDINARY
    record = m.AssessmentRecord(
        today,
        m.FiscalYear(today.year),
        m.IncomeCategoryCode(f"{rng.randint(1, 13):02d}"),
        method,
        amount,
        amount,
        _NA,
        # 特別徴収 from the 老齢基礎年金 paid by 日本年金機構 (codes as in chukan's 国保連 files).
        obligor_code=m.ObligorCode("001") if deducted else None,
        pension_code=m.PensionCode("0120") if deducted else None,
        provisional_amount=m.Yen(amount // 6 // 100 * 100) if deducted else None,
        payment_status=m.PaymentStatus.NOT_DUE,
        payment_status_date=today,
    )
    return m.PremiumAssessment(insured or insured_number(rng), SAMPLE_INSURER, (record,))


def comprehensive_program(
    rng: random.Random, today: dt.date, insured: m.InsuredNumber | None = None
) -> m.ComprehensiveProgram:
    """介護予防・日常生活支援総合事業 (0400): a 事業対象者 since a checklist this year, and one
    month of 訪問型サービス."""
    checked = today - dt.timedelta(days=rng.randint(30, 90))
    eligibility = m.ProgramEligibilityRecord(
        updated=today,
        checklist_date=checked,
        accepted_date=checked,
        decision_date=checked + dt.timedelta(days=7),
        valid_from=checked + dt.timedelta(days=7),
        valid_to=_NA,
        end_reason=_NA,
        care_management_provider=m.ProviderNumber("1290000001"),
    )
    units = rng.randint(500, 3_000)
    service = m.ProgramServiceRecord(
        updated=today,
        service_month=m.YearMonth(checked.year, checked.month),
        service_type=m.ServiceTypeCode(rng.choice(["A1", "A2", "A5", "A6"])),
        provider_number=_NA,
        units=m.Units(units),
        benefit_amount=m.Yen(units * 9),
        user_burden=m.Yen(units),
    )
    return m.ComprehensiveProgram(
        insured or insured_number(rng), SAMPLE_INSURER, (eligibility,), (service,)
    )


SampleFactory = Callable[[random.Random, dt.date, "m.InsuredNumber | None"], m.Item]

#: 特定個人情報名 code → a factory of valid synthetic items (every code of ``ITEM_CODES``).
SAMPLE_FACTORIES: Final[dict[str, SampleFactory]] = {
    "TM00000000010101": insured_qualification,
    "TM00000000010102": address_exception,
    "TM00000000010201": care_certification,
    "TM00000000010202": burden_ratio,
    "TM00000000010300": benefit,
    "TM00000000010400": comprehensive_program,
    "TM00000000010500": premium_assessment,
}
assert set(SAMPLE_FACTORIES) == set(ITEM_CODES)


def sample_item(
    code: str, rng: random.Random, today: dt.date, insured: m.InsuredNumber | None = None
) -> m.Item:
    """A valid synthetic item of 特定個人情報名 ``code``."""
    return SAMPLE_FACTORIES[code](rng, today, insured)


def certification_item(rng: random.Random, today: dt.date) -> bytes:
    """受給者基本情報・要介護認定 (TM00000000010201) as canonical XML bytes."""
    return encode_item(care_certification(rng, today))
