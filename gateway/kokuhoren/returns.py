"""What every 国保連 return file is held to, whichever module stores it.

The ingest (:mod:`.transmission`) fetches the return files and stores 給付実績 itself;
:mod:`.benefits` stores 特別徴収結果 and applies 給付実績 to the 副本. Both check a file
against its listing the same way and move large files off the event loop at the same
size, so those rules live here, below both: the ingest imports :mod:`.benefits`, and
:mod:`.benefits` needs nothing of the ingest.
"""

from __future__ import annotations

from typing import Final, Protocol

from chukan.codecs.kokuhoren_fields import YearMonth
from chukan.gateway.kokuhoren.errors import ReturnFileInvalidError
from chukan.gateway.kokuhoren.mailbox import FileEnvelope

#: Files larger than this are sealed and decoded off the event loop.
THREAD_THRESHOLD: Final = 256 * 1024


class ReturnControl(Protocol):
    """The コントロールレコード values a return file is checked against its listing with."""

    @property
    def insurer_number(self) -> str: ...

    @property
    def processing_month(self) -> YearMonth: ...

    @property
    def file_management_number(self) -> str: ...


def check_listing(
    own_insurer: str | None,
    month: str,
    envelope: FileEnvelope,
    named: tuple[str, YearMonth],
    control: ReturnControl,
) -> None:
    """Refuse a return file whose name or control record is not this 保険者's, for the month
    listed, under the ファイル管理番号 it was fetched by (``named``: the file name's 保険者番号
    and month)."""
    insurer, name_month = named
    if (
        insurer != own_insurer
        or control.insurer_number != insurer
        or str(control.processing_month) != month
        or name_month != control.processing_month
        or control.file_management_number != envelope.file_management_number
    ):
        raise ReturnFileInvalidError(
            "the return file's 保険者番号, month or number does not match its listing"
        )
