from __future__ import annotations

import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, coprime_below, ns, rules
from eedi.sample.kinds import MONEY, POSITIVE, _money_text, number
from eedi.sample.text import frac, from_digits, latex, percent


def draw_fraction_with_percentage_denominator(r: random.Random) -> SimpleNamespace:
    """a/b with b a factor of 100, so the percentage is exact."""
    b = r.choice((2, 4, 5, 10, 20, 25, 50))
    return ns(a=r.choice(coprime_below(b)), b=b)


PERCENT_AMOUNT = "Percentages of an Amount"
PERCENTS = (5, 15, 20, 25, 30, 40, 45, 60, 75, 80)

FAMILIES_PERCENTAGES = [
    Family(
        subject=PERCENT_AMOUNT,
        construct="Calculate a percentage of an amount",
        draw=lambda r: ns(x=r.choice(PERCENTS), y=20 * r.randint(1, 20)),
        question=lambda n: f"What is {percent(n.x)} of {latex(n.y)} ?",
        correct=lambda n: Fraction(n.x * n.y, 100),
        kind=POSITIVE,
        rules=rules(
            {
                "Divides the amount by the percentage": lambda n: Fraction(n.y, n.x),
                "Finds 10% of the amount whatever the percentage asked for": lambda n: Fraction(n.y, 10),
                "Multiplies by the percentage but forgets to divide by 100": lambda n: n.x * n.y,
                "Adds the percentage to the amount as if it were a number": lambda n: n.x + n.y,
                "Finds what is left after taking the percentage away": lambda n: n.y - Fraction(n.x * n.y, 100),
            }
        ),
    ),
    Family(
        subject=PERCENT_AMOUNT,
        construct="Increase an amount by a percentage",
        draw=lambda r: ns(x=r.choice((2, 4, 5, 6, 8, 12, 15, 20, 25, 30, 35)), y=50 * r.randint(1, 20)),
        question=lambda n: f"Increase {latex(_money_text(n.y))} by {percent(n.x)}.",
        correct=lambda n: Fraction(n.y * (100 + n.x), 100),
        kind=MONEY,
        rules=rules(
            {
                "Adds the percentage on as an amount of money": lambda n: n.y + n.x,
                "Finds the percentage but forgets to add it to the original amount": lambda n: Fraction(n.x * n.y, 100),
                "Decreases the amount when the question asks for an increase": lambda n: Fraction(
                    n.y * (100 - n.x), 100
                ),
                "Thinks increasing by x% means multiplying by 1.x": lambda n: n.y * Fraction(f"1.{n.x}"),
            }
        ),
    ),
    Family(
        subject="Converting between Fractions and Percentages",
        construct="Convert a fraction to a percentage",
        draw=draw_fraction_with_percentage_denominator,
        question=lambda n: f"Write {latex(frac(n.a, n.b))} as a percentage.",
        correct=lambda n: Fraction(100 * n.a, n.b),
        kind=number(suffix=" \\%", positive=True),
        rules=rules(
            {
                "Thinks the numerator of a fraction is its percentage": lambda n: n.a,
                "Writes the numerator and denominator side by side as a percentage": lambda n: from_digits([n.a, n.b]),
                "Finds the percentage for one part but forgets to multiply by the numerator": lambda n: Fraction(
                    100, n.b
                ),
                "Thinks a fraction becomes a percentage by multiplying the numerator by 10": lambda n: 10 * n.a,
                "Divides the denominator by the numerator to convert to a percentage": lambda n: Fraction(n.b, n.a),
            }
        ),
    ),
    Family(
        subject="Converting between Decimals and Percentages",
        construct="Convert a percentage to a decimal",
        draw=lambda r: ns(x=r.randint(1, 99)),
        question=lambda n: f"Write {percent(n.x)} as a decimal.",
        correct=lambda n: Fraction(n.x, 100),
        kind=POSITIVE,
        rules=rules(
            {
                "Divides by 10 instead of 100 to convert a percentage to a decimal": lambda n: Fraction(n.x, 10),
                "Divides by 1000 instead of 100 to convert a percentage to a decimal": lambda n: Fraction(n.x, 1000),
                "Thinks the percentage number is already the decimal": lambda n: n.x,
                "Multiplies by 100 instead of dividing by 100 to convert a percentage to a decimal": lambda n: (
                    100 * n.x
                ),
            }
        ),
    ),
]
