"""Synthetic IF_DBM_20113_R01 registration messages for tests, the demo and benchmarks.

Messages are written as text from templates so that 100,000 entries take well under
a second to produce: each item code's sample item (``sample_items``) is encoded once
with a placeholder 被保険者番号 that is replaced per person. Never real data.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from chukan.codecs import item_model as m
from chukan.codecs.items import ITEM_CODES, encode_item
from chukan.codecs.registration import MESSAGE_TYPE_ID, REGISTRATION_NAMESPACE
from chukan.codecs.sample_items import sample_item

_PLACEHOLDER: Final = "0000000000"
_DECLARATION_END: Final = b"?>"


@dataclass(frozen=True, slots=True)
class SyntheticEntry:
    """One list entry; ``item`` is the item XML (with or without declaration) or None."""

    record_id: str
    atena_id: str
    item_code: str
    item: bytes | None
    record_key: str = "1"
    valid_from: dt.date = dt.date(2024, 4, 1)
    valid_to: dt.date | None = None
    major_version: int = 1

    @property
    def deleted(self) -> bool:
        return self.item is None


def item_fragment(xml: bytes) -> str:
    """Item XML without its declaration, to embed in a message."""
    text = xml.strip()
    if text.startswith(b"<?xml"):
        text = text[text.index(_DECLARATION_END) + 2 :].lstrip()
    return text.decode("utf-8")


def _record(entry: SyntheticEntry) -> str:
    parts = [
        "<Record>",
        f"<RecordIdentificationNumber>{entry.record_id}</RecordIdentificationNumber>",
        f"<SegmentOfRegistrationDelete>{'2' if entry.deleted else '1'}"
        "</SegmentOfRegistrationDelete>",
        f"<IntegratedAddressNumber>{entry.atena_id}</IntegratedAddressNumber>",
        f"<SpecificPersonalInformationCode>{entry.item_code}</SpecificPersonalInformationCode>",
        f"<DataSetRecordKey>{entry.record_key}</DataSetRecordKey>",
        f"<SPIMajorVersion>{entry.major_version}</SPIMajorVersion>",
        f"<PublicationDate>{entry.valid_from.isoformat()}</PublicationDate>",
    ]
    if entry.valid_to is not None:
        parts.append(f"<PublishedEndDate>{entry.valid_to.isoformat()}</PublishedEndDate>")
    if entry.item is not None:
        parts.append(
            "<SpecificPersonalInformation>"
            + item_fragment(entry.item)
            + "</SpecificPersonalInformation>"
        )
    parts.append("</Record>\n")
    return "".join(parts)


def registration_chunks(
    message_id: str,
    entries: Iterable[SyntheticEntry],
    *,
    mode: str = "0",
    source: str = "KAIGO01",
    destination: str = "CHUKAN01",
    chunk_entries: int = 500,
) -> Iterator[bytes]:
    """The message as UTF-8 chunks (header first), for streaming to a file or socket."""
    yield (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{MESSAGE_TYPE_ID} xmlns="{REGISTRATION_NAMESPACE}">\n'
        f"<MessageHeader><MSGID>{message_id}</MSGID><MSGTypeID>{MESSAGE_TYPE_ID}</MSGTypeID>"
        f"<MSGMode>{mode}</MSGMode><SourceSystemID>{source}</SourceSystemID>"
        f"<DestinationSystemID>{destination}</DestinationSystemID></MessageHeader>\n"
        "<MessageBody>\n"
    ).encode()
    pending: list[str] = []
    for entry in entries:
        pending.append(_record(entry))
        if len(pending) >= chunk_entries:
            yield "".join(pending).encode()
            pending = []
    if pending:
        yield "".join(pending).encode()
    yield f"</MessageBody>\n</{MESSAGE_TYPE_ID}>\n".encode()


def registration_bytes(
    message_id: str, entries: Iterable[SyntheticEntry], *, mode: str = "0"
) -> bytes:
    return b"".join(registration_chunks(message_id, entries, mode=mode))


def write_registration(
    path: Path, message_id: str, entries: Iterable[SyntheticEntry], *, mode: str = "0"
) -> Path:
    with path.open("wb") as out:
        for chunk in registration_chunks(message_id, entries, mode=mode):
            out.write(chunk)
    return path


class ItemTemplates:
    """One encoded sample item per code; :meth:`item` stamps a 被保険者番号 into it."""

    def __init__(self, rng: random.Random, today: dt.date) -> None:
        self._templates = {
            code: encode_item(sample_item(code, rng, today, m.InsuredNumber(_PLACEHOLDER)))
            for code in ITEM_CODES
        }

    @property
    def codes(self) -> list[str]:
        return sorted(self._templates)

    def item(self, code: str, insured: str) -> bytes:
        if len(insured) != len(_PLACEHOLDER) or not insured.isdigit():
            raise ValueError("a 被保険者番号 is 10 digits")
        return self._templates[code].replace(
            f">{_PLACEHOLDER}<".encode(), f">{insured}<".encode(), 1
        )


def synthetic_entries(
    atena_ids: list[str],
    count: int,
    *,
    rng: random.Random,
    today: dt.date,
    record_prefix: str = "R",
    valid_from: dt.date = dt.date(2024, 4, 1),
) -> Iterator[SyntheticEntry]:
    """``count`` registrations cycling over people and item codes (one record key each)."""
    templates = ItemTemplates(rng, today)
    codes = templates.codes
    for index in range(count):
        atena = atena_ids[index % len(atena_ids)]
        code = codes[(index // len(atena_ids)) % len(codes)]
        yield SyntheticEntry(
            record_id=f"{record_prefix}{index:09d}",
            atena_id=atena,
            item_code=code,
            item=templates.item(code, f"{int(atena) % 10**10:010d}"),
            record_key=str(index // (len(atena_ids) * len(codes)) + 1),
            valid_from=valid_from,
        )
