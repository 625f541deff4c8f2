"""Field-level pieces of the 国保連 CSV codec: code lists and value codecs.

Split out of :mod:`chukan.codecs.kokuhoren` so that the record layouts there
read as tables. Everything here works on one value at a time and knows no
record numbers; the record codec adds them to errors with
:meth:`~chukan.codecs.errors.KokuhorenCsvError.located`.

Error messages never quote the offending value: names and numbers in these
files are personal data, so only the record number, the field name and the
kind of defect (length, position of a bad character) are reported.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import date
from enum import Enum, StrEnum
from typing import Any, Final, Generic, TypeVar

from .errors import (
    CsvCharsetError,
    CsvCheckDigitError,
    CsvFieldError,
    CsvSyntaxError,
    CsvUnknownCodeError,
)

T = TypeVar("T")
E = TypeVar("E", bound=Enum)

# --------------------------------------------------------------------------- code lists


class DataType(StrEnum):
    """データ種別 of the control record: which 連絡票 the file carries."""

    CHANGE = "531"  # 受給者異動連絡票
    CORRECTION = "532"  # 受給者訂正連絡票

    @property
    def exchange_id(self) -> ExchangeId:
        """The only 交換情報識別番号 allowed in data records of this data type."""
        return ExchangeId.CHANGE if self is DataType.CHANGE else ExchangeId.CORRECTION


class ExchangeId(StrEnum):
    """交換情報識別番号 that opens every data record."""

    CHANGE = "5311"  # 受給者異動連絡票情報
    CORRECTION = "5321"  # 受給者訂正連絡票情報

    @property
    def data_type(self) -> DataType:
        """The データ種別 of the files this record may appear in."""
        return DataType.CHANGE if self is ExchangeId.CHANGE else DataType.CORRECTION


class Medium(StrEnum):
    """媒体区分 (emulator code list): how the file reaches 国保連."""

    TRANSMISSION = "1"  # 伝送
    REMOVABLE = "2"  # 電子媒体 (CD-R etc.)


class ChangeKind(StrEnum):
    """異動区分コード."""

    NEW = "1"  # 新規
    CHANGE = "2"  # 変更
    END = "3"  # 終了


class ChangeReason(StrEnum):
    """異動事由 (emulator code list of two-digit codes)."""

    QUALIFICATION_ACQUIRED = "01"  # 資格取得
    QUALIFICATION_LOST = "02"  # 資格喪失
    CERTIFICATION_NEW = "03"  # 新規認定
    CERTIFICATION_RENEWAL = "04"  # 更新認定
    CERTIFICATION_LEVEL_CHANGE = "05"  # 区分変更認定
    BURDEN_RATIO_CHANGE = "06"  # 負担割合変更
    SPECIAL_ADDRESS = "07"  # 住所地特例
    BENEFIT_LIMIT_CHANGE = "08"  # 支給限度額変更
    OTHER = "99"  # その他


class Sex(StrEnum):
    """性別コード."""

    MALE = "1"  # 男
    FEMALE = "2"  # 女


class BurdenRatio(StrEnum):
    """利用者負担割合 (1, 2 or 3 割)."""

    ONE = "1"
    TWO = "2"
    THREE = "3"


class CorrectionKind(StrEnum):
    """訂正区分コード of a 受給者訂正連絡票."""

    CORRECT = "1"  # 訂正
    DELETE = "2"  # 削除


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True, order=True)
class YearMonth:
    """A calendar month such as 処理対象年月; the wire form is ``YYYYMM``."""

    year: int
    month: int

    def __post_init__(self) -> None:
        if not (1 <= self.year <= 9999 and 1 <= self.month <= 12):
            raise ValueError("year must be 1..9999 and month 1..12")

    def __str__(self) -> str:
        return f"{self.year:04d}{self.month:02d}"

    @classmethod
    def of(cls, day: date) -> YearMonth:
        """The month that contains ``day``."""
        return cls(day.year, day.month)


def insurer_check_digit(body: str) -> int:
    """検証番号 of a 介護保険 保険者番号 from its first five digits.

    The rule of the 保険者番号設定要領 (厚生労働省), applied to 都道府県番号 +
    保険者別番号: multiply the digits by 2 and 1 alternately starting with 2 at
    the last digit, add the digits of each product (14 counts as 1 + 4), and
    the check digit is 10 minus the last digit of the sum (0 when that is 0).
    Example: 13101 → 2+3+2+0+2 = 9 → 1, giving 131011. This is the Luhn
    (modulus 10, weights 2-1) check: the six digits together pass Luhn.
    """
    if len(body) != 5 or not _is_ascii_digits(body):
        raise ValueError("the body of a 保険者番号 is five digits")
    total = 0
    for position, char in enumerate(reversed(body)):
        product = int(char) * (2 if position % 2 == 0 else 1)
        total += product // 10 + product % 10
    return (10 - total % 10) % 10


def is_valid_insurer_number(number: str) -> bool:
    """Six ASCII digits, 都道府県番号 01–47, and a matching 検証番号."""
    return (
        len(number) == 6
        and _is_ascii_digits(number)
        and 1 <= int(number[:2]) <= 47
        and insurer_check_digit(number[:5]) == int(number[5])
    )


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit() alone accepts full-width and other Unicode digits.
    return text.isascii() and text.isdigit()


# --------------------------------------------------------------------------- field codecs


class FieldCodec(ABC, Generic[T]):
    """Turns one wire value (the text between the quotes) into a typed value and back.

    ``parse`` is the single source of the field's rules; the record encoder
    runs it on its own output, so nothing is written that could not be read.
    """

    #: Short format description, used in the layout tables of the docs.
    spec: str = ""

    @abstractmethod
    def parse(self, text: str, field: str) -> T:
        """The typed value of ``text``, or a :class:`~chukan.codecs.errors.KokuhorenCsvError`."""

    @abstractmethod
    def format(self, value: object, field: str) -> str:
        """The wire text of ``value`` (its type is checked, not trusted)."""


class Required(FieldCodec[T]):
    """A codec whose value may not be empty; subclasses parse non-empty text."""

    def parse(self, text: str, field: str) -> T:
        if text == "":
            raise CsvFieldError("required value is empty", field=field)
        return self._parse(text, field)

    def format(self, value: object, field: str) -> str:
        if value is None:
            raise CsvFieldError("required value is missing", field=field)
        return self._format(value, field)

    @abstractmethod
    def _parse(self, text: str, field: str) -> T: ...

    @abstractmethod
    def _format(self, value: object, field: str) -> str: ...


def _wrong_type(field: str, expected: str) -> CsvFieldError:
    return CsvFieldError(f"value must be {expected}", field=field)


def _check_digits(text: str, field: str, min_length: int, max_length: int) -> None:
    if not _is_ascii_digits(text):
        raise CsvFieldError("value must contain only the digits 0-9", field=field)
    if not min_length <= len(text) <= max_length:
        expected = f"{min_length}" if min_length == max_length else f"{min_length} to {max_length}"
        raise CsvFieldError(f"value has {len(text)} digits, expected {expected}", field=field)


class Fixed(Required[str]):
    """A constant such as レコード種別; any other value is an unknown code."""

    def __init__(self, constant: str) -> None:
        self.constant = constant
        self.spec = f'"{constant}"'

    def _parse(self, text: str, field: str) -> str:
        if text != self.constant:
            raise CsvUnknownCodeError(f"value must be {self.constant}", field=field)
        return text

    def _format(self, value: object, field: str) -> str:
        if value != self.constant:
            raise CsvUnknownCodeError(f"value must be {self.constant}", field=field)
        return self.constant


class Digits(Required[str]):
    """An identifier of ASCII digits whose leading zeros matter (被保険者番号)."""

    def __init__(self, min_length: int, max_length: int | None = None) -> None:
        self.min_length = min_length
        self.max_length = min_length if max_length is None else max_length
        self.spec = (
            f"{min_length} digits"
            if self.max_length == min_length
            else f"{min_length}-{self.max_length} digits"
        )

    def _parse(self, text: str, field: str) -> str:
        _check_digits(text, field, self.min_length, self.max_length)
        return text

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise _wrong_type(field, "a string of digits")
        return value


class Number(Required[int]):
    """A non-negative integer written in decimal (counts, amounts, レコード番号)."""

    def __init__(self, max_digits: int, minimum: int = 0) -> None:
        self.max_digits = max_digits
        self.minimum = minimum
        self.spec = f"integer ≥ {minimum}, 1-{max_digits} digits"

    def _parse(self, text: str, field: str) -> int:
        _check_digits(text, field, 1, self.max_digits)
        number = int(text)
        if number < self.minimum:
            raise CsvFieldError(f"value must be at least {self.minimum}", field=field)
        return number

    def _format(self, value: object, field: str) -> str:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(field, "an integer")
        if value < 0:
            raise CsvFieldError("value must not be negative", field=field)
        return str(value)


class InsurerNumber(Required[str]):
    """保険者番号: six digits, 都道府県番号 01–47 first, 検証番号 last."""

    spec = "6 digits, check digit"

    def _parse(self, text: str, field: str) -> str:
        _check_digits(text, field, 6, 6)
        if not 1 <= int(text[:2]) <= 47:
            raise CsvFieldError("the first two digits must be a 都道府県番号 01-47", field=field)
        if insurer_check_digit(text[:5]) != int(text[5]):
            raise CsvCheckDigitError("the check digit (検証番号) does not match", field=field)
        return text

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise _wrong_type(field, "a string of digits")
        return value


class Prefecture(Required[str]):
    """都道府県番号: two digits, 01 (北海道) to 47 (沖縄県)."""

    spec = "2 digits 01-47"

    def _parse(self, text: str, field: str) -> str:
        _check_digits(text, field, 2, 2)
        if not 1 <= int(text) <= 47:
            raise CsvUnknownCodeError("value must be a 都道府県番号 01-47", field=field)
        return text

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise _wrong_type(field, "a string of digits")
        return value


class Date(Required[date]):
    """A real calendar date written ``YYYYMMDD``."""

    spec = "YYYYMMDD"

    def _parse(self, text: str, field: str) -> date:
        _check_digits(text, field, 8, 8)
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            raise CsvFieldError("value is not a real date", field=field) from None

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, date):
            raise _wrong_type(field, "a date")
        return f"{value.year:04d}{value.month:02d}{value.day:02d}"


class Month(Required[YearMonth]):
    """A real month written ``YYYYMM``."""

    spec = "YYYYMM"

    def _parse(self, text: str, field: str) -> YearMonth:
        _check_digits(text, field, 6, 6)
        try:
            return YearMonth(int(text[:4]), int(text[4:]))
        except ValueError:
            raise CsvFieldError("value is not a real month", field=field) from None

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, YearMonth):
            raise _wrong_type(field, "a YearMonth")
        return str(value)


class Code(Required[E]):
    """A value of one code list (an :class:`enum.Enum` of wire strings)."""

    def __init__(self, codes: type[E]) -> None:
        self.codes = codes
        self._by_text: dict[str, E] = {str(member.value): member for member in codes}
        self.spec = " / ".join(self._by_text)

    def _parse(self, text: str, field: str) -> E:
        try:
            return self._by_text[text]
        except KeyError:
            raise CsvUnknownCodeError("value is not in the code list", field=field) from None

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, self.codes):
            raise _wrong_type(field, f"a {self.codes.__name__}")
        return str(value.value)


class Flag(Required[bool]):
    """A 区分 that is ``0`` (no) or ``1`` (yes)."""

    spec = "0 / 1"

    def _parse(self, text: str, field: str) -> bool:
        if text not in ("0", "1"):
            raise CsvUnknownCodeError("value must be 0 or 1", field=field)
        return text == "1"

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, bool):
            raise _wrong_type(field, "a bool")
        return "1" if value else "0"


def check_cp932(text: str, field: str) -> None:
    """Refuse characters that CP932 cannot encode, or cannot give back unchanged.

    CP932 folds a few characters (U+301C WAVE DASH and U+FF5E both become
    0x8160), so those are refused too: a value must survive the round trip.
    """
    try:
        encoded = text.encode("cp932")
    except UnicodeEncodeError as exc:
        raise CsvCharsetError(
            f"character {exc.start + 1} cannot be encoded in Shift_JIS (CP932)", field=field
        ) from None
    back = encoded.decode("cp932")
    if back != text:
        index = next(i for i, (a, b) in enumerate(zip(text, back, strict=False)) if a != b)
        raise CsvCharsetError(
            f"character {index + 1} has no distinct Shift_JIS (CP932) code", field=field
        )


_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})


def _check_printable(text: str, field: str) -> None:
    for index, char in enumerate(text):
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            private = 0xE000 <= ord(char) <= 0xF8FF
            kind = "a user-defined character (外字)" if private else "a control character"
            raise CsvCharsetError(f"character {index + 1} is {kind}", field=field)


class Text(Required[str]):
    """Free text of CP932 characters (漢字 names); no control characters or 外字."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.spec = f"CP932 text, ≤ {max_chars} characters"

    def _parse(self, text: str, field: str) -> str:
        check_cp932(text, field)
        _check_printable(text, field)
        if len(text) > self.max_chars:
            raise CsvFieldError(
                f"value has {len(text)} characters, at most {self.max_chars} allowed", field=field
            )
        return text

    def _format(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise _wrong_type(field, "a string")
        return value


# Full-width katakana ァ..ヶ, ・, ー and the ideographic space; half-width
# katakana ｦ..ﾟ with ･ and the ASCII space.
_KANA: Final = re.compile("[\u30a1-\u30f6\u30fb\u30fc\u3000\uff65-\uff9f ]*")


class Kana(Text):
    """カナ氏名: full-width or half-width katakana with spaces and middle dots."""

    def __init__(self, max_chars: int) -> None:
        super().__init__(max_chars)
        self.spec = f"katakana, ≤ {max_chars} characters"

    def _parse(self, text: str, field: str) -> str:
        check_cp932(text, field)
        matched = _KANA.match(text)
        end = 0 if matched is None else matched.end()
        if end != len(text):
            raise CsvFieldError(f"character {end + 1} is not katakana", field=field)
        if len(text) > self.max_chars:
            raise CsvFieldError(
                f"value has {len(text)} characters, at most {self.max_chars} allowed", field=field
            )
        return text


class Maybe(FieldCodec[T | None]):
    """An inner codec whose value may be empty (``None``)."""

    def __init__(self, inner: FieldCodec[T]) -> None:
        self.inner = inner
        self.spec = inner.spec

    def parse(self, text: str, field: str) -> T | None:
        return None if text == "" else self.inner.parse(text, field)

    def format(self, value: object, field: str) -> str:
        if value is None:
            return ""
        text = self.inner.format(value, field)
        if text == "":  # it would come back as None: give an absent value as None
            raise CsvFieldError("an absent value must be None, not empty", field=field)
        return text


class Empty(FieldCodec[None]):
    """A column that these files leave empty (事業所番号 of the control record)."""

    spec = "empty"

    def parse(self, text: str, field: str) -> None:
        if text != "":
            raise CsvFieldError("value must be empty in this file", field=field)

    def format(self, value: object, field: str) -> str:
        if value is not None:
            raise CsvFieldError("value must be empty in this file", field=field)
        return ""


@dataclass(frozen=True, slots=True)
class Column:
    """One position of a record layout: item name, dataclass attribute, codec.

    ``attr`` is ``None`` for columns the record class does not store
    (レコード種別, レコード番号, 交換情報識別番号, 事業所番号).
    """

    name: str
    attr: str | None
    codec: FieldCodec[Any]
    required: bool


def column(name: str, attr: str | None, codec: FieldCodec[Any]) -> Column:
    """A layout column; whether it is required follows from its codec."""
    return Column(name, attr, codec, required=not isinstance(codec, Maybe | Empty))


# --------------------------------------------------------------------------- CSV lines

# One quoted value: quote, then runs of non-quote characters separated by
# doubled quotes, then the closing quote (unrolled so matching stays linear).
_QUOTED: Final = re.compile(r'"([^"]*(?:""[^"]*)*)"')


def split_values(line: str) -> list[str]:
    """The unquoted values of one CSV line (without its CRLF).

    Every value must be enclosed in double quotes, a quote inside a value is
    doubled, and values are separated by single commas; anything else is a
    :class:`CsvSyntaxError` naming the column.
    """
    if line == "":
        raise CsvSyntaxError("the line is empty")
    values: list[str] = []
    position = 0
    while True:
        column_label = f"column {len(values) + 1}"
        matched = _QUOTED.match(line, position)
        if matched is None:
            if position < len(line) and line[position] != '"':
                raise CsvSyntaxError("value is not enclosed in double quotes", field=column_label)
            if position == len(line):
                raise CsvSyntaxError("a value is missing after the last comma", field=column_label)
            raise CsvSyntaxError("quoted value is not closed", field=column_label)
        values.append(matched.group(1).replace('""', '"'))
        position = matched.end()
        if position == len(line):
            return values
        if line[position] != ",":
            raise CsvSyntaxError(
                "stray character after a closing quote (a quote inside a value must be doubled)",
                field=column_label,
            )
        position += 1


def join_values(values: list[str]) -> str:
    """One CSV line (without CRLF): every value quoted, inner quotes doubled."""
    return ",".join('"' + value.replace('"', '""') + '"' for value in values)
