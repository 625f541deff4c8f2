"""How fast a 国保連 CSV file of garbage is refused, beside a bare split of the same bytes.

The decoder must refuse hostile input quickly and with a bounded list of errors
(a test asserts the bound, never the time); this bench measures the time.  For
each kind of garbage and each size it runs ``decode_file`` (refused) and
``decode_records`` (errors collected up to the limit) and reports MB/s beside
the same bytes split into lines (``bytes.split``), the least any reader does.

Run:  .venv/bin/python -m bench.kokuhoren_csv [--sizes 1,10,50] [--json FILE]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from bench.harness import Figure, add_json_argument, print_figures, write_json
from chukan.codecs.errors import CsvError
from chukan.codecs.kokuhoren import decode_file, decode_records

MB = 1024 * 1024


KINDS = ("random bytes", "no line ends", "empty lines", "short bad lines", "quote storm")


def garbage(kind: str, size: int, rng: random.Random) -> bytes:
    makers: dict[str, Callable[[], bytes]] = {
        "random bytes": lambda: rng.randbytes(size),
        "no line ends": lambda: b'"' * size,
        "empty lines": lambda: b"\r\n" * (size // 2),
        "short bad lines": lambda: b'"2",x\r\n' * (size // 8),
        "quote storm": lambda: (b'"' + b'""' * 400 + b",\r\n") * (size // 804),
    }
    return makers[kind]()


def refuse(data: bytes) -> None:
    try:
        decode_file(data)
    except CsvError:
        pass
    else:
        raise SystemExit("garbage was accepted")
    if decode_records(data).ok:
        raise SystemExit("garbage was accepted")


def rate(data: bytes, work: Callable[[bytes], object], repeat: int = 3) -> float:
    """MB/s, the best of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work(data)
        best = min(best, time.perf_counter() - started)
    return len(data) / MB / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1,10,50", help="sizes in MiB, comma-separated (default 1,10,50)"
    )
    add_json_argument(parser)
    args = parser.parse_args()
    rng = random.Random(6)
    figures = []
    for size in (int(part) for part in args.sizes.split(",") if part):
        for kind in (
            "random bytes",
            "no line ends",
            "empty lines",
            "short bad lines",
            "quote storm",
        ):
            data = garbage(kind, size * MB, rng)
            figures.append(
                Figure(
                    f"refused, {kind}, {size} MiB",
                    rate(data, refuse),
                    "MB/s",
                    "bytes.split into lines",
                    rate(data, lambda d: d.split(b"\r\n")),
                )
            )
            print_figures(figures[-1:])
    print()
    print_figures(figures)
    write_json(args.json, figures, sizes_mib=args.sizes)


if __name__ == "__main__":
    main()
