from __future__ import annotations

import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, ns, rules
from eedi.sample.kinds import DURATION, POSITIVE
from eedi.sample.text import SQ_CM, dec, latex, unit


def draw_times(r: random.Random) -> SimpleNamespace:
    h1 = r.randint(8, 14)
    m1 = r.choice(range(25, 60, 5))
    return ns(h1=h1, m1=m1, h2=h1 + r.randint(1, 4), m2=r.choice(range(0, m1, 5)))


def _elapsed(n: SimpleNamespace) -> tuple[int, int]:
    return divmod((n.h2 * 60 + n.m2) - (n.h1 * 60 + n.m1), 60)


METRIC = (
    ("m", "cm", 100, "centimetres"),
    ("km", "m", 1000, "metres"),
    ("cm", "mm", 10, "millimetres"),
    ("kg", "g", 1000, "grams"),
    ("l", "ml", 1000, "millilitres"),
)


def draw_metric_conversion(r: random.Random) -> SimpleNamespace:
    big, small, factor, name = r.choice(METRIC)
    return ns(x=Fraction(r.randint(11, 999), 10 ** r.randint(1, 2)), big=big, small=small, f=factor, name=name)


FAMILIES_MEASURES = [
    Family(
        subject="Time",
        construct="Calculate time intervals that cross the hour",
        draw=draw_times,
        question=lambda n: (
            f"A film starts at {n.h1}:{n.m1:02d} and finishes at {n.h2}:{n.m2:02d}. How long is the film?"
        ),
        correct=_elapsed,
        kind=DURATION,
        rules=rules(
            {
                "Subtracts times as if there were 100 minutes in an hour": lambda n: divmod(
                    (n.h2 * 100 + n.m2) - (n.h1 * 100 + n.m1), 100
                ),
                "Only counts the change in the hours when finding a time interval": lambda n: (n.h2 - n.h1, 0),
                "Subtracts the hours and the minutes separately, taking the smaller number of minutes from the larger": lambda n: (
                    n.h2 - n.h1,
                    n.m1 - n.m2,
                ),
                "Counts on to the next hour but forgets the minutes before it": lambda n: (n.h2 - n.h1 - 1, n.m2),
            }
        ),
    ),
    Family(
        subject="Time",
        construct="Convert a decimal number of hours to minutes",
        draw=lambda r: ns(
            w=r.randint(1, 9),
            f=r.choice(
                (Fraction(1, 10), Fraction(1, 5), Fraction(1, 4), Fraction(2, 5), Fraction(1, 2), Fraction(3, 4))
            ),
        ),
        question=lambda n: f"How many minutes are there in {latex(dec(n.w + n.f))} hours?",
        correct=lambda n: (n.w + n.f) * 60,
        kind=POSITIVE,
        rules=rules(
            {
                "Thinks there are 100 minutes in an hour": lambda n: (n.w + n.f) * 100,
                "Treats the digits after the decimal point as the number of minutes": lambda n: n.w * 60 + n.f * 100,
                "Only converts the whole number of hours to minutes": lambda n: n.w * 60,
            }
        ),
    ),
    Family(
        subject="Length, Weight and Capacity Conversions",
        construct="Convert between metric units by multiplying",
        draw=draw_metric_conversion,
        question=lambda n: f"How many {n.name} are there in {latex(dec(n.x) + unit(n.big))} ?",
        correct=lambda n: n.x * n.f if n.x.denominator != 1 else None,
        kind=POSITIVE,
        rules=rules(
            {
                "Uses a conversion factor ten times too small": lambda n: n.x * Fraction(n.f, 10),
                "Uses a conversion factor ten times too large": lambda n: n.x * n.f * 10,
                "Divides instead of multiplying when converting to a smaller unit": lambda n: n.x / n.f,
                "Writes zeros on the end of a decimal instead of multiplying when converting units": lambda n: (
                    dec(n.x) + "0" * (len(str(n.f)) - 1)
                ),
                "Thinks every metric conversion uses a factor of 100": lambda n: n.x * 100,
            }
        ),
    ),
    Family(
        subject="Area Units",
        construct="Convert square metres to square centimetres",
        draw=lambda r: ns(x=Fraction(r.randint(2, 99), r.choice((1, 10)))),
        question=lambda n: f"How many {latex(SQ_CM)} are there in {latex(dec(n.x) + unit('m') + '^{2}')} ?",
        correct=lambda n: n.x * 10000,
        kind=POSITIVE,
        rules=rules(
            {
                "Uses the length conversion factor when converting area units": lambda n: n.x * 100,
                "Doubles the length conversion factor when converting area units": lambda n: n.x * 200,
                "Divides instead of multiplying when converting area units": lambda n: n.x / 10000,
                "Uses 1000 as the conversion factor between square metres and square centimetres": lambda n: n.x * 1000,
            }
        ),
    ),
]
