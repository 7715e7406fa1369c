from __future__ import annotations

import math
import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, ns, rules
from eedi.sample.kinds import POSITIVE
from eedi.sample.text import dec, from_digits, latex, plural, round_half_up, truncate

PLACE_VALUE = "Place Value"


def draw_decimal_digits(r: random.Random) -> SimpleNamespace:
    """A number like 3.472 (distinct non-zero digits) and one of its decimal places."""
    ds = r.sample(range(1, 10), 4)
    place = r.randint(1, 3)
    return ns(x=Fraction(from_digits(ds), 1000), digit=ds[place], place=place)


def draw_integer_and_power_of_ten(r: random.Random) -> SimpleNamespace | None:
    x = r.randint(101, 9999)
    return ns(x=x, k=r.randint(1, 3)) if x % 10 else None


def draw_round_1dp(r: random.Random) -> SimpleNamespace | None:
    k = r.randint(1001, 999999)
    return ns(x=Fraction(k, 1000)) if k % 10 else None


def draw_round_sf(r: random.Random) -> SimpleNamespace:
    N = r.randint(10000, 99999)
    return ns(N=N, s=r.randint(1, 3), L=len(str(N)))


def round_sf(N: int, s: int) -> Fraction:
    return round_half_up(N, s - len(str(N)))


FAMILIES_PLACE_VALUE = [
    Family(
        subject=PLACE_VALUE,
        construct="Multiply a decimal by 10, 100 or 1000",
        draw=lambda r: ns(x=Fraction(r.randint(101, 9999), 10 ** r.randint(1, 2)), k=r.randint(1, 3)),
        question=lambda n: latex(f"{dec(n.x)} \\times {10**n.k}="),
        correct=lambda n: n.x * 10**n.k if n.x.denominator != 1 else None,
        kind=POSITIVE,
        rules=rules(
            {
                "Moves the decimal point the wrong way when multiplying by a power of ten": lambda n: n.x / 10**n.k,
                "Moves the decimal point one place fewer than the number of zeros when multiplying": lambda n: (
                    n.x * 10 ** (n.k - 1)
                ),
                "Moves the decimal point one place too many when multiplying by a power of ten": lambda n: (
                    n.x * 10 ** (n.k + 1)
                ),
                "Writes zeros on the end of a decimal to multiply it by a power of ten": lambda n: dec(n.x) + "0" * n.k,
                "Multiplies only the whole-number part of a decimal by the power of ten": lambda n: (
                    math.floor(n.x) * 10**n.k + (n.x - math.floor(n.x))
                ),
            }
        ),
    ),
    Family(
        subject=PLACE_VALUE,
        construct="Divide an integer by 10, 100 or 1000",
        draw=draw_integer_and_power_of_ten,
        question=lambda n: latex(f"{n.x} \\div {10**n.k}="),
        correct=lambda n: Fraction(n.x, 10**n.k),
        kind=POSITIVE,
        rules=rules(
            {
                "Multiplies instead of dividing by a power of ten": lambda n: n.x * 10**n.k,
                "Moves the decimal point one place fewer than the number of zeros when dividing": lambda n: Fraction(
                    n.x, 10 ** (n.k - 1)
                ),
                "Moves the decimal point one place too many when dividing by a power of ten": lambda n: Fraction(
                    n.x, 10 ** (n.k + 1)
                ),
                "Crosses off digits from the end of the number to divide by a power of ten": lambda n: n.x // 10**n.k,
            }
        ),
    ),
    Family(
        subject=PLACE_VALUE,
        construct="Identify the value of a digit after the decimal point",
        draw=draw_decimal_digits,
        question=lambda n: f"What is the value of the {latex(n.digit)} in {latex(dec(n.x))} ?",
        correct=lambda n: Fraction(n.digit, 10**n.place),
        kind=POSITIVE,
        rules=rules(
            {
                "Gives the value of the column one place to the left": lambda n: Fraction(n.digit, 10 ** (n.place - 1)),
                "Gives the value of the column one place to the right": lambda n: Fraction(
                    n.digit, 10 ** (n.place + 1)
                ),
                "Gives the digit itself rather than its place value": lambda n: n.digit,
                "Thinks the columns after the decimal point are tens, hundreds and thousands": lambda n: (
                    n.digit * 10**n.place
                ),
            }
        ),
    ),
    Family(
        subject="Rounding to Decimal Places",
        construct="Round a number to one decimal place",
        draw=draw_round_1dp,
        question=lambda n: f"Round {latex(dec(n.x))} to one decimal place.",
        correct=lambda n: round_half_up(n.x, 1),
        kind=POSITIVE,
        rules=rules(
            {
                "Truncates instead of rounding": lambda n: truncate(n.x, 1),
                "Rounds to two decimal places instead of one": lambda n: round_half_up(n.x, 2),
                "Rounds to the nearest whole number instead of to one decimal place": lambda n: round_half_up(n.x, 0),
                "Always rounds up, even when the next digit is less than 5": lambda n: (
                    truncate(n.x, 1) + Fraction(1, 10)
                ),
                "Rounds to one significant figure instead of one decimal place": lambda n: round_half_up(
                    n.x, 1 - len(str(math.floor(n.x)))
                ),
                "Rounds to the nearest ten instead of to one decimal place": lambda n: round_half_up(n.x, -1),
            }
        ),
    ),
    Family(
        subject="Rounding to Significant Figures",
        construct="Round an integer to a given number of significant figures",
        draw=draw_round_sf,
        question=lambda n: f"Round {latex(n.N)} to {plural(n.s, 'significant figure')}.",
        correct=lambda n: round_sf(n.N, n.s),
        kind=POSITIVE,
        rules=rules(
            {
                "Leaves out the place-holding zeros when rounding to significant figures": lambda n: (
                    round_sf(n.N, n.s) / 10 ** (n.L - n.s)
                ),
                "Truncates instead of rounding to significant figures": lambda n: truncate(n.N, n.s - n.L),
                "Rounds to one more significant figure than asked": lambda n: round_sf(n.N, n.s + 1),
                "Rounds to one fewer significant figure than asked": lambda n: (
                    round_sf(n.N, n.s - 1) if n.s > 1 else None
                ),
                "Counts significant figures from the right-hand end of the number": lambda n: round_half_up(n.N, -n.s),
            }
        ),
    ),
]
