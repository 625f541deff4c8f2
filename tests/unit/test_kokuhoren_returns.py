"""給付実績 return files (emulator layout 861/8611): golden bytes, round trips, refusals."""

from __future__ import annotations

import pytest

from chukan.codecs.errors import (
    CsvCharsetError,
    CsvCountMismatchError,
    CsvFieldCountError,
    CsvFieldError,
    CsvFileNameError,
    CsvLineEndError,
    CsvRecordNumberError,
    CsvStructureError,
    CsvUnknownCodeError,
    KokuhorenCsvError,
)
from chukan.codecs.kokuhoren_fields import YearMonth
from chukan.codecs.kokuhoren_returns import (
    BenefitControl,
    BenefitFile,
    BenefitRecord,
    benefit_file_name,
    decode_benefit_file,
    encode_benefit_file,
    parse_benefit_file_name,
)

MONTH = YearMonth(2024, 5)
CONTROL = BenefitControl(1, 0, "122010", MONTH, "0000000007")
RECORDS = (
    BenefitRecord(MONTH, "1234567890", "1210000001", "11", 1000, 9000, 1000),
    BenefitRecord(YearMonth(2024, 4), "2234567890", "1210000002", "43", 1500, 12000, 3000),
)
GOLDEN = (
    b'"1","1","1","2","861","122010","202405","0000000007"\r\n'
    b'"2","2","8611","202405","1234567890","1210000001","11","1000","9000","1000"\r\n'
    b'"2","3","8611","202404","2234567890","1210000002","43","1500","12000","3000"\r\n'
    b'"3","4"\r\n'
)


def test_golden_file_round_trips() -> None:
    file = BenefitFile.build(CONTROL, RECORDS)
    assert file.control.record_count == 2
    assert encode_benefit_file(file) == GOLDEN
    assert decode_benefit_file(GOLDEN) == file
    assert file.file_name == "10_861122010202405.csv"


def test_a_file_without_records_is_valid() -> None:
    file = BenefitFile.build(CONTROL, ())
    data = encode_benefit_file(file)
    assert data == b'"1","1","1","0","861","122010","202405","0000000007"\r\n"3","2"\r\n'
    assert decode_benefit_file(data) == file


@pytest.mark.parametrize(
    ("data", "error", "record_number"),
    [
        (GOLDEN.replace(b'"1","2","861"', b'"1","3","861"'), CsvCountMismatchError, 1),
        (GOLDEN.replace(b'"9000","1000"', b'"9000","1001"'), CsvFieldError, 2),
        (GOLDEN.replace(b'"8611","202404"', b'"8611","202406"'), CsvFieldError, 3),
        (GOLDEN.replace(b'"861"', b'"531"'), CsvUnknownCodeError, 1),
        (GOLDEN.replace(b'"2","3","8611"', b'"2","4","8611"'), CsvRecordNumberError, 3),
        (GOLDEN.replace(b',"1000"\r\n', b"\r\n", 1), CsvFieldCountError, 2),
        (GOLDEN.replace(b"1234567890", b"123456789"), CsvFieldError, 2),
        (GOLDEN.replace(b"122010", b"122011"), CsvFieldError, 1),
        (GOLDEN[:-2], CsvLineEndError, None),
        (GOLDEN.replace(b'"3","4"\r\n', b""), CsvStructureError, 3),
        (GOLDEN.replace(b'"11"', b'"\x82"'), CsvCharsetError, 2),
        (b"", CsvStructureError, None),
    ],
)
def test_defects_are_refused_with_their_record(
    data: bytes, error: type[KokuhorenCsvError], record_number: int | None
) -> None:
    with pytest.raises(error) as caught:
        decode_benefit_file(data)
    assert caught.value.record_number == record_number
    # Messages never quote values of the file.
    assert "1234567890" not in str(caught.value)


def test_encoder_refuses_what_the_decoder_would() -> None:
    bad = BenefitRecord(MONTH, "12345", "1210000001", "11", 1000, 9000, 1000)
    with pytest.raises(CsvFieldError) as caught:
        encode_benefit_file(BenefitFile.build(CONTROL, (bad,)))
    assert caught.value.field == "被保険者番号" and caught.value.record_number == 2
    wrong_sum = BenefitRecord(MONTH, "1234567890", "1210000001", "11", 1000, 1, 1)
    with pytest.raises(CsvFieldError):
        encode_benefit_file(BenefitFile.build(CONTROL, (wrong_sum,)))
    with pytest.raises(CsvCountMismatchError):
        encode_benefit_file(BenefitFile(CONTROL, RECORDS))  # レコード件数 0 for two records


def test_file_names() -> None:
    assert benefit_file_name("122010", MONTH) == "10_861122010202405.csv"
    assert parse_benefit_file_name("10_861122010202405.csv") == ("122010", MONTH)
    for name in (
        "10_861122011202405.csv",  # check digit
        "10_531122010202405.csv",  # another data type
        "10_861122010202413.csv",  # no such month
        "10_861122010202405.CSV",
    ):
        with pytest.raises(CsvFileNameError):
            parse_benefit_file_name(name)
    with pytest.raises(CsvFileNameError):
        benefit_file_name("122011", MONTH)
