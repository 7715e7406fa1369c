from __future__ import annotations

import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, ns, rules
from eedi.sample.kinds import POSITIVE, POWER, RATIONAL
from eedi.sample.text import latex

INDICES = "Laws of Indices"


def draw_division_powers(r: random.Random) -> SimpleNamespace:
    n = r.randint(2, 5)
    m = n * r.randint(2, 4) if r.random() < 0.5 else r.randint(n + 1, 12)
    return ns(a=r.randint(2, 7), m=m, n=n)


FAMILIES_INDICES = [
    Family(
        subject=INDICES,
        construct="Multiply powers with the same base",
        draw=lambda r: ns(a=r.randint(2, 7), m=r.randint(2, 9), n=r.randint(2, 9)),
        question=lambda n: "Write as a single power: " + latex(f"{n.a}^{{{n.m}}} \\times {n.a}^{{{n.n}}}"),
        correct=lambda n: (n.a, n.m + n.n),
        kind=POWER,
        rules=rules(
            {
                "Multiplies the powers when multiplying numbers with the same base": lambda n: (n.a, n.m * n.n),
                "Multiplies the bases as well as adding the powers": lambda n: (n.a * n.a, n.m + n.n),
                "Multiplies both the bases and the powers": lambda n: (n.a * n.a, n.m * n.n),
                "Adds the bases as well as adding the powers": lambda n: (2 * n.a, n.m + n.n),
                "Subtracts the powers when multiplying numbers with the same base": lambda n: (
                    (n.a, n.m - n.n) if n.m != n.n else None
                ),
            }
        ),
    ),
    Family(
        subject=INDICES,
        construct="Divide powers with the same base",
        draw=draw_division_powers,
        question=lambda n: "Write as a single power: " + latex(f"{n.a}^{{{n.m}}} \\div {n.a}^{{{n.n}}}"),
        correct=lambda n: (n.a, n.m - n.n),
        kind=POWER,
        rules=rules(
            {
                "Divides the powers when dividing numbers with the same base": lambda n: (
                    (n.a, n.m // n.n) if n.m % n.n == 0 else None
                ),
                "Adds the powers when dividing numbers with the same base": lambda n: (n.a, n.m + n.n),
                "Divides the bases as well as subtracting the powers": lambda n: (1, n.m - n.n),
                "Subtracts the powers the wrong way round when dividing": lambda n: (n.a, n.n - n.m),
                "Multiplies the powers when dividing numbers with the same base": lambda n: (n.a, n.m * n.n),
            }
        ),
    ),
    Family(
        subject="Squares, Cubes and Other Powers",
        construct="Calculate a positive integer power of a number",
        draw=lambda r: ns(b=r.randint(2, 9), n=r.randint(2, 5)),
        question=lambda n: f"Work out {latex(f'{n.b}^{{{n.n}}}')}",
        correct=lambda n: n.b**n.n,
        kind=POSITIVE,
        rules=rules(
            {
                "Multiplies the base by the power": lambda n: n.b * n.n,
                "Multiplies the base by itself one time too many": lambda n: n.b ** (n.n + 1),
                "Multiplies the base by itself one time too few": lambda n: n.b ** (n.n - 1),
                "Swaps the base and the power": lambda n: n.n**n.b,
                "Adds the base and the power": lambda n: n.b + n.n,
            }
        ),
    ),
    Family(
        subject="Negative Indices",
        construct="Evaluate a number raised to a negative power",
        draw=lambda r: ns(a=r.randint(2, 10), n=r.randint(2, 4)),
        question=lambda n: f"Work out {latex(f'{n.a}^{{-{n.n}}}')}",
        correct=lambda n: Fraction(1, n.a**n.n),
        kind=RATIONAL,
        rules=rules(
            {
                "Thinks a negative power gives a negative answer": lambda n: -(n.a**n.n),
                "Multiplies the base by the negative power": lambda n: -n.a * n.n,
                "Thinks a negative power means dividing the base by the power": lambda n: Fraction(n.a, n.n),
                "Ignores the negative sign in the power": lambda n: n.a**n.n,
                "Thinks a negative power means one over the base times the power": lambda n: Fraction(1, n.a * n.n),
            }
        ),
    ),
]
