"""Exceptions of ``chukan.codecs``: one root, subtrees by failure kind.

Every class carries a stable machine-readable ``code`` that the HTTP boundary
returns unchanged, so callers can branch on it without parsing messages.
"""

from __future__ import annotations

from typing import ClassVar, Self

from chukan.errorcodes import LocatedError


class CodecError(LocatedError):
    """Root of every wire-format failure (XML, XSD, 国保連 CSV)."""

    code: ClassVar[str] = "codec_error"


class XmlError(CodecError):
    """The bytes are not acceptable XML."""

    code: ClassVar[str] = "xml_malformed"


class XmlForbiddenError(XmlError):
    """DTDs, entity declarations or processing tricks: refused, never resolved."""

    code: ClassVar[str] = "xml_forbidden"


class XmlLimitError(XmlError):
    """Document larger or deeper than the configured limits."""

    code: ClassVar[str] = "xml_too_large"


class XmlEncodingError(XmlError):
    """Declared encoding is not UTF-8 or the bytes do not decode as declared."""

    code: ClassVar[str] = "xml_encoding"


class XmlStructureError(XmlError):
    """Well-formed XML with the wrong root, namespace or a missing element."""

    code: ClassVar[str] = "xml_structure"


class SchemaError(CodecError):
    """Well-formed XML that does not validate against its XSD."""

    code: ClassVar[str] = "schema_invalid"


class CsvError(CodecError):
    """国保連 CSV files and records that break the layout rules."""

    code: ClassVar[str] = "csv_invalid"


class ItemCodeUnsupportedError(CodecError):
    """No schema for this 特定個人情報名 code: its items are not accepted."""

    code: ClassVar[str] = "item_code_unsupported"


class ItemUnknownError(CodecError):
    """The 特定個人情報名 code (or value type) is not an item this codec knows."""

    code: ClassVar[str] = "item_unknown"


# -- 国保連 CSV (chukan.codecs.kokuhoren, kokuhoren_fields, kokuhoren_returns) -----------------


def _where(record_number: int | None, field: str | None) -> str | None:
    if record_number is None:
        return field
    if field is None:
        return f"record {record_number}"
    return f"record {record_number}, {field}"


class KokuhorenCsvError(CsvError):
    """Base of the 国保連 CSV failures; knows its record number and field name.

    ``record_number`` is the 1-based position of the line in the file (the
    レコード番号 the record should carry); ``field`` is the item name of the
    layout (e.g. ``被保険者番号``) or ``column N`` when the layout is unknown.
    """

    def __init__(
        self, message: str, *, record_number: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, where=_where(record_number, field))
        self.record_number = record_number
        self.field = field

    def located(self, record_number: int | None) -> Self:
        """The same error, placed at ``record_number`` (the field is kept)."""
        return type(self)(self.message, record_number=record_number, field=self.field)


class CsvSyntaxError(KokuhorenCsvError):
    """A value is not enclosed in double quotes, or a quote stands astray."""

    code: ClassVar[str] = "csv_syntax"


class CsvLineEndError(KokuhorenCsvError):
    """Lines do not end with CRLF (bare LF or CR, or a missing final CRLF)."""

    code: ClassVar[str] = "csv_line_end"


class CsvCharsetError(KokuhorenCsvError):
    """Bytes that are not CP932, or a character that CP932 cannot carry."""

    code: ClassVar[str] = "csv_charset"


class CsvStructureError(KokuhorenCsvError):
    """Control, data and end records are not in the order 1, 2…, 3."""

    code: ClassVar[str] = "csv_structure"


class CsvFieldCountError(KokuhorenCsvError):
    """A record has more or fewer values than its layout."""

    code: ClassVar[str] = "csv_field_count"


class CsvFieldError(KokuhorenCsvError):
    """A value breaks its field's format: length, digits, date, character set."""

    code: ClassVar[str] = "csv_field_invalid"


class CsvUnknownCodeError(CsvFieldError):
    """A code field holds a value outside its code list."""

    code: ClassVar[str] = "csv_code_unknown"


class CsvCheckDigitError(CsvFieldError):
    """A 保険者番号 whose 検証番号 (check digit) does not match."""

    code: ClassVar[str] = "csv_check_digit"


class CsvPeriodError(CsvFieldError):
    """A period whose start date lies after its end date."""

    code: ClassVar[str] = "csv_period_invalid"


class CsvRecordNumberError(KokuhorenCsvError):
    """レコード番号 values are not consecutive from 1."""

    code: ClassVar[str] = "csv_record_number"


class CsvCountMismatchError(KokuhorenCsvError):
    """The control record's レコード件数 differs from the data records present."""

    code: ClassVar[str] = "csv_count_mismatch"


class CsvDataTypeError(KokuhorenCsvError):
    """A data record's 交換情報識別番号 does not belong to the file's データ種別."""

    code: ClassVar[str] = "csv_data_type_mismatch"


class CsvLimitError(KokuhorenCsvError):
    """The file, a line or the error list is larger than the decoder accepts."""

    code: ClassVar[str] = "csv_too_large"


class CsvFileNameError(KokuhorenCsvError):
    """A file name that is not ``10_{データ種別}{保険者番号}{YYYYMM}.csv``."""

    code: ClassVar[str] = "csv_file_name"


class StopDecodingError(CodecError):
    """The lenient 国保連 decoder has collected enough errors (control flow, never escapes)."""

    code: ClassVar[str] = "csv_decoding_stopped"


class SplitUnsureError(CodecError):
    """The byte-range split of a registration message cannot vouch for it (control flow:
    the caller decodes the message with the streaming parser instead; never escapes)."""

    code: ClassVar[str] = "registration_split_unsure"


class SliceRefusedError(CodecError):
    """A byte-range slice of a registration message is not the whole entries the split
    counted (control flow: the caller falls back to the streaming parser; never escapes)."""

    code: ClassVar[str] = "registration_slice_refused"


class MessageBatchError(CodecError):
    """A batch of network messages (or its replies) that is not the container's shape."""

    code: ClassVar[str] = "message_batch_invalid"
