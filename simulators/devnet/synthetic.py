"""Synthetic people for the demo, tests and benchmarks: never real data.

個人番号 are random with a valid check digit; names are drawn from short
lists of common kana so nothing resembles a real record.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

from chukan.codecs.individual_number import check_digit

FAMILY_NAMES: Final = ("ヤマダ", "スズキ", "タナカ", "ワタナベ", "イトウ", "ナカムラ", "コバヤシ")
GIVEN_NAMES: Final = ("ハナコ", "タロウ", "ヨシコ", "ケンジ", "カズコ", "ヒロシ", "ミチコ")


@dataclass(frozen=True, slots=True)
class SyntheticPerson:
    atena_id: str
    individual_number: str
    kana_name: str
    birth_year: int

    def __repr__(self) -> str:  # keep the 個人番号 out of any accidental print
        return f"SyntheticPerson(atena_id={self.atena_id!r}, kana_name={self.kana_name!r})"


def synthetic_individual_number(rng: random.Random) -> str:
    body = "".join(rng.choice("0123456789") for _ in range(11))
    return body + str(check_digit(body))


def synthetic_person(rng: random.Random, atena_prefix: str = "9") -> SyntheticPerson:
    return SyntheticPerson(
        atena_id=atena_prefix + "".join(rng.choice("0123456789") for _ in range(14)),
        individual_number=synthetic_individual_number(rng),
        kana_name=f"{rng.choice(FAMILY_NAMES)} {rng.choice(GIVEN_NAMES)}",
        birth_year=rng.randint(1930, 1960),
    )
