from __future__ import annotations

import math
import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, draw_shared_factor, ns, rules
from eedi.sample.families.algebra import X2
from eedi.sample.kinds import EXPRESSION, NUMBER, POSITIVE, RATIONAL
from eedi.sample.text import digits_of, expr, from_digits, latex, lin, ordinal, smallest_prime_factor


def draw_column_subtraction(r: random.Random) -> SimpleNamespace | None:
    a = r.randint(300, 999)
    b = r.randint(100, a - 1)
    ta, tb = digits_of(a), digits_of(b)
    return ns(a=a, b=b, ta=ta, tb=tb) if ta[1] < tb[1] or ta[2] < tb[2] else None


def draw_column_addition(r: random.Random) -> SimpleNamespace | None:
    a, b = r.randint(100, 899), r.randint(100, 899)
    ta, tb = digits_of(a), digits_of(b)
    carries = ta[2] + tb[2] >= 10 or ta[1] + tb[1] >= 10
    return ns(a=a, b=b, ta=ta, tb=tb) if carries and a + b < 1000 else None


def carry_the_units(ta: list[int], tb: list[int]) -> int:
    """Column addition that writes the tens digit of a column total and carries the units digit."""
    out, carry = [], 0
    for x, y in zip(reversed(ta), reversed(tb)):
        total = x + y + carry
        write, carry = divmod(total, 10) if total >= 10 else (total, 0)
        out.append(write)
    return from_digits(([carry] if carry else []) + out[::-1])


def draw_two_points(r: random.Random) -> SimpleNamespace:
    (x1, x2), (y1, y2) = r.sample(range(0, 10), 2), r.sample(range(-5, 13), 2)
    return ns(x1=x1, y1=y1, x2=x2, y2=y2)


FAMILIES_NUMBER = [
    Family(
        subject="Written Subtraction",
        construct="Subtract integers using a written column method",
        draw=draw_column_subtraction,
        question=lambda n: f"Use column subtraction to work out {latex(f'{n.a}-{n.b}')}",
        correct=lambda n: n.a - n.b,
        kind=POSITIVE,
        rules=rules(
            {
                "Subtracts the smaller digit from the larger in each column": lambda n: from_digits(
                    abs(x - y) for x, y in zip(n.ta, n.tb)
                ),
                "Exchanges ten from the next column but forgets to reduce that column": lambda n: from_digits(
                    (x - y) % 10 for x, y in zip(n.ta, n.tb)
                ),
                "Writes zero in a column when the top digit is smaller than the bottom digit": lambda n: from_digits(
                    max(x - y, 0) for x, y in zip(n.ta, n.tb)
                ),
            }
        ),
    ),
    Family(
        subject="Written Addition",
        construct="Add integers using a written column method",
        draw=draw_column_addition,
        question=lambda n: f"Use column addition to work out {latex(f'{n.a}+{n.b}')}",
        correct=lambda n: n.a + n.b,
        kind=POSITIVE,
        rules=rules(
            {
                "Forgets to carry when adding in columns": lambda n: from_digits(
                    (x + y) % 10 for x, y in zip(n.ta, n.tb)
                ),
                "Writes the whole column total in the answer instead of carrying": lambda n: from_digits(
                    x + y for x, y in zip(n.ta, n.tb)
                ),
                "Carries the units digit and writes the tens digit of a column total": lambda n: carry_the_units(
                    n.ta, n.tb
                ),
            }
        ),
    ),
    Family(
        subject="Linear Sequences (nth term)",
        construct="Find the nth term rule for an ascending linear sequence",
        draw=lambda r: ns(a=r.randint(1, 15), d=r.randint(2, 9)),
        question=lambda n: (
            "What is the nth term rule of this sequence? "
            + latex(",".join(str(n.a + k * n.d) for k in range(4)) + ", \\ldots")
        ),
        correct=lambda n: lin(n.d, n.a - n.d, "n"),
        kind=EXPRESSION,
        rules=rules(
            {
                "Uses the first term as the coefficient of n and the difference as the constant": lambda n: lin(
                    n.a, n.d, "n"
                ),
                "Uses the first term as the constant in the nth term rule": lambda n: lin(n.d, n.a, "n"),
                "Writes the term-to-term rule as n plus the difference": lambda n: lin(1, n.d, "n"),
                "Adds the difference to the first term instead of subtracting it to find the constant": lambda n: lin(
                    n.d, n.a + n.d, "n"
                ),
                "Thinks the nth term is n plus the first term": lambda n: lin(1, n.a, "n"),
            }
        ),
    ),
    Family(
        subject="Linear Sequences (nth term)",
        construct="Generate a term of a sequence from its nth term rule",
        draw=lambda r: ns(c=r.randint(2, 9), k=r.choice([k for k in range(-9, 10) if k]), t=r.randint(5, 20)),
        question=lambda n: (
            f"What is the {ordinal(n.t)} term of the sequence with nth term {latex(expr(lin(n.c, n.k, 'n')))} ?"
        ),
        correct=lambda n: n.c * n.t + n.k,
        kind=NUMBER,
        rules=rules(
            {
                "Writes the coefficient and the term number side by side instead of multiplying": lambda n: (
                    from_digits([n.c, n.t]) + n.k
                ),
                "Adds the coefficient and the term number instead of multiplying": lambda n: n.c + n.t + n.k,
                "Ignores the constant in the nth term rule": lambda n: n.c * n.t,
                "Uses the wrong sign for the constant in the nth term rule": lambda n: n.c * n.t - n.k,
            }
        ),
    ),
    Family(
        subject="Factors and Highest Common Factor",
        construct="Find the highest common factor of two numbers",
        draw=lambda r: draw_shared_factor(r, (4, 6, 8, 9, 10, 12, 14, 15)),
        question=lambda n: f"What is the highest common factor of {latex(n.a)} and {latex(n.b)} ?",
        correct=lambda n: n.g,
        kind=POSITIVE,
        rules=rules(
            {
                "Gives the lowest common multiple instead of the highest common factor": lambda n: math.lcm(n.a, n.b),
                "Gives a common factor that is not the highest": lambda n: n.g // smallest_prime_factor(n.g),
                "Multiplies the two numbers to find the highest common factor": lambda n: n.a * n.b,
                "Thinks the highest common factor is the difference between the two numbers": lambda n: abs(n.a - n.b),
                "Gives the smaller number as the highest common factor": lambda n: min(n.a, n.b),
            }
        ),
    ),
    Family(
        subject="Multiples and Lowest Common Multiple",
        construct="Find the lowest common multiple of two numbers",
        draw=lambda r: draw_shared_factor(r, (2, 3, 4, 5, 6)),
        question=lambda n: f"What is the lowest common multiple of {latex(n.a)} and {latex(n.b)} ?",
        correct=lambda n: math.lcm(n.a, n.b),
        kind=POSITIVE,
        rules=rules(
            {
                "Gives the highest common factor instead of the lowest common multiple": lambda n: n.g,
                "Multiplies the two numbers even though they share a factor": lambda n: n.a * n.b,
                "Adds the two numbers to find the lowest common multiple": lambda n: n.a + n.b,
                "Gives the larger number as the lowest common multiple": lambda n: max(n.a, n.b),
            }
        ),
    ),
    Family(
        subject="Gradient Between Two Co-ordinates",
        construct="Calculate the gradient of a line through two points",
        draw=draw_two_points,
        question=lambda n: (
            f"What is the gradient of the line through {latex(f'({n.x1},{n.y1})')} and {latex(f'({n.x2},{n.y2})')} ?"
        ),
        correct=lambda n: Fraction(n.y2 - n.y1, n.x2 - n.x1),
        kind=RATIONAL,
        rules=rules(
            {
                "Divides the change in x by the change in y": lambda n: Fraction(n.x2 - n.x1, n.y2 - n.y1),
                "Subtracts the coordinates in a different order for x and for y": lambda n: Fraction(
                    n.y2 - n.y1, n.x1 - n.x2
                ),
                "Adds the coordinates instead of subtracting them to find a gradient": lambda n: Fraction(
                    n.y1 + n.y2, n.x1 + n.x2
                ),
                "Gives the change in y as the gradient": lambda n: n.y2 - n.y1,
                "Divides the y-coordinate by the x-coordinate of one point to find the gradient": lambda n: Fraction(
                    n.y2, n.x2
                ),
            }
        ),
    ),
    Family(
        subject="Substitution into Formula",
        construct="Substitute a positive integer into an expression with a squared term",
        draw=lambda r: ns(c=r.randint(2, 6), x=r.randint(2, 9)),
        question=lambda n: f"What is the value of {latex(f'{n.c} {X2}')} when {latex(f'x={n.x}')} ?",
        correct=lambda n: n.c * n.x**2,
        kind=POSITIVE,
        rules=rules(
            {
                "Multiplies by the coefficient before squaring": lambda n: (n.c * n.x) ** 2,
                "Thinks squaring means multiplying by 2 when substituting": lambda n: n.c * 2 * n.x,
                "Adds the coefficient instead of multiplying by it": lambda n: n.c + n.x**2,
                "Ignores the power when substituting": lambda n: n.c * n.x,
            }
        ),
    ),
]
