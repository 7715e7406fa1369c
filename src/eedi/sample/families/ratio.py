from __future__ import annotations

import math
import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, draw_common_factor, ns, rules
from eedi.sample.kinds import MONEY, RATIO, _money_text
from eedi.sample.text import latex


def draw_ratio_share(r: random.Random) -> SimpleNamespace | None:
    a = r.randint(1, 5)
    b = r.randint(a + 1, 9)
    return ns(a=a, b=b, N=(a + b) * r.randint(2, 12)) if math.gcd(a, b) == 1 else None


def draw_proportion(r: random.Random) -> SimpleNamespace:
    q1, q2 = sorted(r.sample(range(2, 16), 2))
    return ns(
        q1=q1,
        q2=q2,
        unit=Fraction(r.randint(2, 20), 2),
        item=r.choice(("pens", "pencils", "rulers", "notebooks", "rubbers")),
    )


FAMILIES_RATIO = [
    Family(
        subject="Sharing in a Ratio",
        construct="Share an amount in a given two-part ratio",
        draw=draw_ratio_share,
        question=lambda n: (
            f"{latex(_money_text(n.N))} is shared in the ratio {latex(f'{n.a}: {n.b}')}. How much is the larger share?"
        ),
        correct=lambda n: Fraction(n.N * n.b, n.a + n.b),
        kind=MONEY,
        rules=rules(
            {
                "Shares the amount equally instead of in the ratio": lambda n: Fraction(n.N, 2),
                "Gives the smaller share instead of the larger share": lambda n: Fraction(n.N * n.a, n.a + n.b),
                "Finds the value of one part but does not multiply by the number of parts": lambda n: Fraction(
                    n.N, n.a + n.b
                ),
                "Divides the amount by the larger number in the ratio": lambda n: Fraction(n.N, n.b),
            }
        ),
    ),
    Family(
        subject="Simplifying Ratios",
        construct="Write a ratio in its simplest form",
        draw=draw_common_factor,
        question=lambda n: f"Write the ratio {latex(f'{n.P}: {n.Q}')} in its simplest form.",
        correct=lambda n: (n.p, n.q),
        kind=RATIO,
        rules=rules(
            {
                "Divides both parts of the ratio by a common factor that is not the highest": lambda n: (
                    n.P // n.s,
                    n.Q // n.s,
                ),
                "Divides only one part of the ratio by the common factor": lambda n: (n.p, n.Q),
                "Writes the simplified ratio the wrong way round": lambda n: (n.q, n.p),
                "Subtracts the same number from both parts of a ratio to simplify it": lambda n: (n.P - n.m, n.Q - n.m),
            }
        ),
    ),
    Family(
        subject="Direct Proportion",
        construct="Solve a direct proportion problem about cost",
        draw=draw_proportion,
        question=lambda n: (
            f"{n.q1} {n.item} cost {latex(_money_text(n.q1 * n.unit))}. How much do {n.q2} {n.item} cost?"
        ),
        correct=lambda n: n.q2 * n.unit,
        kind=MONEY,
        rules=rules(
            {
                "Adds the difference in the number of items to the cost (additive reasoning)": lambda n: (
                    n.q1 * n.unit + (n.q2 - n.q1)
                ),
                "Multiplies the total cost by the new number of items": lambda n: n.q1 * n.unit * n.q2,
                "Multiplies the total cost by the difference in the number of items": lambda n: (
                    n.q1 * n.unit * (n.q2 - n.q1)
                ),
                "Divides the total cost by the new number of items": lambda n: Fraction(n.q1 * n.unit, n.q2),
                "Finds the cost of one item but does not multiply by the new number of items": lambda n: n.unit,
            }
        ),
    ),
]
