from __future__ import annotations

import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, ns, rules
from eedi.sample.kinds import NUMBER, number
from eedi.sample.text import celsius, latex


def draw_negative_plus_positive(r: random.Random) -> SimpleNamespace | None:
    """-a + b, mostly with b > a: answers that cross zero, where the counting slip can happen."""
    a, b = r.sample(range(1, 16), 2)
    return ns(a=a, b=b) if (b > a) == (r.random() < 0.75) else None


def draw_exact_division(r: random.Random) -> SimpleNamespace:
    b, k = r.randint(2, 9), r.randint(2, 12)
    return ns(a=b * k, b=b, k=k)


NEG_ADD = "Adding and Subtracting Negative Numbers"
NEG_MUL = "Multiplying and Dividing Negative Numbers"

FAMILIES_NEGATIVES = [
    Family(
        subject=NEG_ADD,
        construct="Subtract a negative integer",
        # Mostly negative first numbers: there every rule gives a different wrong answer.
        draw=lambda r: ns(a=r.randint(1, 12) * (1 if r.random() < 0.3 else -1), b=r.randint(2, 12)),
        question=lambda n: latex(f"{n.a}-(-{n.b})="),
        correct=lambda n: n.a + n.b,
        kind=NUMBER,
        rules=rules(
            {
                "Thinks subtracting a negative number is the same as subtracting a positive number": lambda n: (
                    n.a - n.b
                ),
                "Thinks two negatives always give a negative answer": lambda n: -abs(n.a + n.b),
                "Ignores the sign of the first number when subtracting a negative": lambda n: abs(n.a) + n.b,
                "Thinks subtracting a negative number leaves the first number unchanged": lambda n: n.a,
            }
        ),
    ),
    Family(
        subject=NEG_ADD,
        construct="Add a positive integer to a negative integer",
        draw=draw_negative_plus_positive,
        question=lambda n: latex(f"-{n.a}+{n.b}="),
        correct=lambda n: n.b - n.a,
        kind=NUMBER,
        rules=rules(
            {
                "Adds the sizes of the numbers and keeps the negative sign": lambda n: -(n.a + n.b),
                "Ignores the negative sign and adds the two numbers": lambda n: n.a + n.b,
                "Thinks a negative number plus a positive number always gives a negative answer": lambda n: (
                    -abs(n.b - n.a)
                ),
                "Thinks a negative number plus a positive number always gives a positive answer": lambda n: abs(
                    n.b - n.a
                ),
                "Counts zero as an extra step when counting on across zero": lambda n: (
                    n.b - n.a - 1 if n.b > n.a else None
                ),
            }
        ),
    ),
    Family(
        subject=NEG_ADD,
        construct="Solve problems involving a rise in temperature from below zero",
        draw=lambda r: ns(a=r.randint(1, 12), b=r.randint(2, 15)),
        question=lambda n: (
            f"The temperature is {celsius(-n.a)}. It rises by {celsius(n.b)}. What is the new temperature?"
        ),
        correct=lambda n: n.b - n.a,
        kind=number(suffix="^{\\circ} \\mathrm{C}"),
        rules=rules(
            {
                "Moves down the number line instead of up when a temperature rises": lambda n: -n.a - n.b,
                "Ignores the negative sign of the starting temperature": lambda n: n.a + n.b,
                "Counts up from zero instead of from the starting temperature": lambda n: n.b,
                "Finds the difference between the numbers but keeps the negative sign": lambda n: -abs(n.b - n.a),
            }
        ),
    ),
    Family(
        subject=NEG_MUL,
        construct="Multiply two negative integers",
        draw=lambda r: ns(a=r.randint(2, 12), b=r.randint(2, 12)),
        question=lambda n: latex(f"(-{n.a}) \\times(-{n.b})="),
        correct=lambda n: n.a * n.b,
        kind=NUMBER,
        rules=rules(
            {
                "Thinks multiplying two negative numbers gives a negative answer": lambda n: -n.a * n.b,
                "Adds two negative numbers when the question asks to multiply them": lambda n: -(n.a + n.b),
                "Ignores the signs and adds instead of multiplying": lambda n: n.a + n.b,
            }
        ),
    ),
    Family(
        subject=NEG_MUL,
        construct="Divide a negative integer by a positive integer",
        draw=draw_exact_division,
        question=lambda n: latex(f"(-{n.a}) \\div {n.b}="),
        correct=lambda n: -n.k,
        kind=NUMBER,
        rules=rules(
            {
                "Thinks dividing a negative number by a positive number gives a positive answer": lambda n: n.k,
                "Subtracts instead of dividing with negative numbers": lambda n: -n.a - n.b,
                "Divides the smaller number by the larger number": lambda n: -Fraction(n.b, n.a),
                "Multiplies instead of dividing with negative numbers": lambda n: -n.a * n.b,
            }
        ),
    ),
]
