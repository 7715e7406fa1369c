from __future__ import annotations

import math
import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import (
    Family,
    coprime_below,
    draw_common_factor,
    draw_fraction_pair,
    draw_larger_first,
    draw_mixed_number,
    draw_two_fractions,
    ns,
    rules,
)
from eedi.sample.kinds import POSITIVE, fraction
from eedi.sample.text import frac, from_digits, latex, reduced

# ---- families, grouped by subject ---------------------------------------------------------


def draw_fraction_of_amount(r: random.Random) -> SimpleNamespace:
    """A non-unit fraction a/b of an amount N that b divides."""
    b = r.randint(3, 10)
    return ns(b=b, a=r.choice(coprime_below(b, start=2)), N=b * r.randint(2, 12))


FRACTIONS_ADD = "Adding and Subtracting Fractions"
FRACTIONS_MUL = "Multiplying and Dividing Fractions"

FAMILIES_FRACTIONS = [
    Family(
        subject=FRACTIONS_ADD,
        construct="Add proper fractions with different denominators",
        draw=draw_two_fractions,
        question=lambda n: latex(f"{frac(n.a, n.b)}+{frac(n.c, n.d)}="),
        correct=lambda n: reduced(Fraction(n.a, n.b) + Fraction(n.c, n.d)),
        kind=fraction(),
        rules=rules(
            {
                "Adds the numerators and adds the denominators when adding fractions": lambda n: (n.a + n.c, n.b + n.d),
                "Adds the numerators and multiplies the denominators when adding fractions": lambda n: (
                    n.a + n.c,
                    n.b * n.d,
                ),
                "Adds the numerators and keeps the larger denominator when adding fractions": lambda n: (
                    n.a + n.c,
                    max(n.b, n.d),
                ),
                "Finds a common denominator but adds the original numerators without scaling them": lambda n: (
                    n.a + n.c,
                    math.lcm(n.b, n.d),
                ),
                "Multiplies the denominators for a common denominator but only scales the first numerator": lambda n: (
                    n.a * n.d + n.c,
                    n.b * n.d,
                ),
                "Multiplies the fractions when the question asks to add them": lambda n: (n.a * n.c, n.b * n.d),
                "Cross-multiplies the numerators correctly but adds the denominators": lambda n: (
                    n.a * n.d + n.c * n.b,
                    n.b + n.d,
                ),
            }
        ),
    ),
    Family(
        subject=FRACTIONS_ADD,
        construct="Subtract proper fractions with different denominators",
        draw=draw_larger_first,
        question=lambda n: latex(f"{frac(n.a, n.b)}-{frac(n.c, n.d)}="),
        correct=lambda n: reduced(Fraction(n.a, n.b) - Fraction(n.c, n.d)),
        kind=fraction(),
        rules=rules(
            {
                "Subtracts the numerators and subtracts the denominators when subtracting fractions": lambda n: (
                    n.a - n.c,
                    n.b - n.d,
                ),
                "Subtracts the numerators and keeps the larger denominator": lambda n: (n.a - n.c, max(n.b, n.d)),
                "Subtracts the numerators and multiplies the denominators": lambda n: (n.a - n.c, n.b * n.d),
                "Multiplies the denominators but only scales the first numerator when subtracting fractions": lambda n: (
                    n.a * n.d - n.c,
                    n.b * n.d,
                ),
                "Adds the fractions when the question asks to subtract them": lambda n: reduced(
                    Fraction(n.a, n.b) + Fraction(n.c, n.d)
                ),
                "Subtracts the numerators but adds the denominators": lambda n: (n.a - n.c, n.b + n.d),
            }
        ),
    ),
    Family(
        subject="Converting Mixed Numbers and Improper Fractions",
        construct="Convert a mixed number to an improper fraction",
        draw=draw_mixed_number,
        question=lambda n: f"Write {latex(f'{n.w} {frac(n.n, n.d)}')} as an improper fraction.",
        correct=lambda n: (n.w * n.d + n.n, n.d),
        kind=fraction(),
        rules=rules(
            {
                "Multiplies the whole number by the denominator but forgets to add the numerator": lambda n: (
                    n.w * n.d,
                    n.d,
                ),
                "Adds the whole number to the numerator when converting a mixed number": lambda n: (n.w + n.n, n.d),
                "Multiplies the whole number by the numerator and then adds the denominator": lambda n: (
                    n.w * n.n + n.d,
                    n.d,
                ),
                "Multiplies the whole number by the numerator instead of the denominator": lambda n: (
                    n.w * n.n + n.n,
                    n.d,
                ),
                "Writes the whole number and the numerator side by side as the new numerator": lambda n: (
                    from_digits([n.w, n.n]),
                    n.d,
                ),
            }
        ),
    ),
    Family(
        subject=FRACTIONS_MUL,
        construct="Multiply proper fractions",
        draw=draw_fraction_pair,
        question=lambda n: latex(f"{frac(n.a, n.b)} \\times {frac(n.c, n.d)}="),
        correct=lambda n: reduced(Fraction(n.a * n.c, n.b * n.d)),
        kind=fraction(),
        rules=rules(
            {
                "Multiplies the numerators but adds the denominators when multiplying fractions": lambda n: (
                    n.a * n.c,
                    n.b + n.d,
                ),
                "Cross-multiplies instead of multiplying straight across": lambda n: (n.a * n.d, n.b * n.c),
                "Adds the fractions when the question asks to multiply them": lambda n: (
                    n.a * n.d + n.b * n.c,
                    n.b * n.d,
                ),
                "Multiplies the numerators but keeps the denominator of the first fraction": lambda n: (n.a * n.c, n.b),
                "Adds the numerators when multiplying fractions": lambda n: (n.a + n.c, n.b * n.d),
            }
        ),
    ),
    Family(
        subject=FRACTIONS_MUL,
        construct="Divide proper fractions",
        draw=draw_fraction_pair,
        question=lambda n: latex(f"{frac(n.a, n.b)} \\div {frac(n.c, n.d)}="),
        correct=lambda n: reduced(Fraction(n.a * n.d, n.b * n.c)),
        kind=fraction(),
        rules=rules(
            {
                "Multiplies the fractions when the question asks to divide them": lambda n: (n.a * n.c, n.b * n.d),
                "Flips the first fraction instead of the second when dividing": lambda n: (n.b * n.c, n.a * n.d),
                "Flips both fractions before multiplying when dividing": lambda n: (n.b * n.d, n.a * n.c),
                "Flips the second fraction but then adds instead of multiplying": lambda n: (
                    n.a * n.c + n.d * n.b,
                    n.b * n.c,
                ),
                "Multiplies the first fraction by the denominator of the second fraction only": lambda n: (
                    n.a * n.d,
                    n.b,
                ),
            }
        ),
    ),
    Family(
        subject="Fractions of an Amount",
        construct="Calculate a non-unit fraction of an amount",
        draw=draw_fraction_of_amount,
        question=lambda n: f"What is {latex(frac(n.a, n.b))} of {latex(n.N)} ?",
        correct=lambda n: Fraction(n.N * n.a, n.b),
        kind=POSITIVE,
        rules=rules(
            {
                "Divides by the numerator and multiplies by the denominator when finding a fraction of an amount": lambda n: (
                    Fraction(n.N * n.b, n.a)
                ),
                "Divides by the denominator but forgets to multiply by the numerator": lambda n: Fraction(n.N, n.b),
                "Multiplies the amount by the numerator but forgets to divide by the denominator": lambda n: n.N * n.a,
                "Divides the amount by the numerator of the fraction": lambda n: Fraction(n.N, n.a),
                "Multiplies the amount by the denominator instead of dividing by it": lambda n: n.N * n.b,
                "Finds the part that is left over instead of the fraction asked for": lambda n: (
                    n.N - Fraction(n.N * n.a, n.b)
                ),
            }
        ),
    ),
    Family(
        subject="Simplifying Fractions",
        construct="Simplify a fraction fully by dividing by the highest common factor",
        draw=draw_common_factor,
        question=lambda n: f"Write {latex(frac(n.P, n.Q))} in its simplest form.",
        correct=lambda n: (n.p, n.q),
        # Every rule below gives an *equivalent* fraction, so compare the writing, not the value.
        kind=fraction(by_value=False),
        rules=rules(
            {
                "Divides the numerator and denominator by a common factor that is not the highest": lambda n: (
                    n.P // n.s,
                    n.Q // n.s,
                ),
                "Subtracts the same number from the numerator and the denominator to simplify": lambda n: (
                    n.P - n.m,
                    n.Q - n.m,
                ),
                "Divides the numerator by the common factor but not the denominator": lambda n: (n.p, n.Q),
                "Divides the denominator by the common factor but not the numerator": lambda n: (n.P, n.q),
                "Writes the simplified fraction upside down": lambda n: (n.q, n.p),
            }
        ),
    ),
]
