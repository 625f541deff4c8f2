"""Exceptions of ``chukan.codecs``: one root, subtrees by failure kind.

Every class carries a stable machine-readable ``code`` that the HTTP boundary
returns unchanged, so callers can branch on it without parsing messages.
"""

from __future__ import annotations

from typing import ClassVar

from chukan.errorcodes import CodedError


class CodecError(CodedError):
    """Root of every wire-format failure (XML, XSD, 国保連 CSV)."""

    code: ClassVar[str] = "codec_error"

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: A location hint (XPath, record number, field name) without personal data.
        self.where = where

    def __str__(self) -> str:
        return self.message if self.where is None else f"{self.message} (at {self.where})"


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
