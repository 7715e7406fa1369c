from __future__ import annotations

import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, ns, rules
from eedi.sample.kinds import EXPRESSION, number
from eedi.sample.text import expr, latex, lin


def draw_linear_terms(r: random.Random) -> SimpleNamespace:
    return ns(a=r.randint(2, 9), b=r.randint(1, 9), c=r.randint(2, 9), d=r.randint(1, 9))


def draw_bracket(r: random.Random) -> SimpleNamespace:
    return ns(
        a=r.choice([k for k in range(-9, 10) if abs(k) >= 2]),
        b=r.randint(1, 6),
        c=r.choice([k for k in range(-9, 10) if k]),
    )


def draw_double_bracket(r: random.Random) -> SimpleNamespace | None:
    a, b = r.sample([k for k in range(-9, 10) if k], 2)
    return ns(a=a, b=b) if a + b else None


def draw_equation(r: random.Random) -> SimpleNamespace:
    a, x, b = r.randint(2, 9), r.randint(-5, 12), r.randint(1, 20)
    return ns(a=a, b=b, c=a * x + b, x=x)


X2 = "x^{2}"

FAMILIES_ALGEBRA = [
    Family(
        subject="Simplifying Expressions by Collecting Like Terms",
        construct="Simplify an expression by collecting like terms",
        draw=draw_linear_terms,
        question=lambda n: f"Simplify {latex(f'{n.a} x+{n.b}+{n.c} x-{n.d}')}",
        correct=lambda n: lin(n.a + n.c, n.b - n.d),
        kind=EXPRESSION,
        rules=rules(
            {
                "Combines the x terms and the number terms into a single term": lambda n: (
                    (n.a + n.c + n.b - n.d, "x"),
                ),
                "Ignores the subtraction sign in front of a term when collecting like terms": lambda n: lin(
                    n.a + n.c, n.b + n.d
                ),
                "Collects the x terms but leaves out the number terms": lambda n: ((n.a + n.c, "x"),),
                "Multiplies the coefficients of like terms instead of adding them": lambda n: lin(n.a * n.c, n.b - n.d),
                "Thinks adding like terms increases the power": lambda n: lin(n.a + n.c, n.b - n.d, X2),
            }
        ),
    ),
    Family(
        subject="Simplifying Expressions by Collecting Like Terms",
        construct="Multiply two algebraic terms with the same letter",
        draw=lambda r: ns(p=r.randint(2, 9), q=r.randint(2, 9), v=r.choice("abmpy")),
        question=lambda n: "Simplify " + latex(f"{n.p} {n.v} \\times {n.q} {n.v}"),
        correct=lambda n: ((n.p * n.q, f"{n.v}^{{2}}"),),
        kind=EXPRESSION,
        rules=rules(
            {
                "Adds the coefficients when multiplying algebraic terms": lambda n: ((n.p + n.q, f"{n.v}^{{2}}"),),
                "Does not square the letter when multiplying it by itself": lambda n: ((n.p * n.q, n.v),),
                "Thinks multiplying a letter by itself doubles it": lambda n: ((2 * n.p * n.q, n.v),),
                "Adds algebraic terms when the question asks to multiply them": lambda n: ((n.p + n.q, n.v),),
            }
        ),
    ),
    Family(
        subject="Expanding Single Brackets",
        construct="Expand a single bracket with a number outside",
        draw=draw_bracket,
        question=lambda n: f"Expand {latex(f'{n.a}({expr(lin(n.b, n.c))})')}",
        correct=lambda n: lin(n.a * n.b, n.a * n.c),
        kind=EXPRESSION,
        rules=rules(
            {
                "Only multiplies the first term in the bracket by the number outside": lambda n: lin(n.a * n.b, n.c),
                "Only multiplies the second term in the bracket by the number outside": lambda n: lin(n.b, n.a * n.c),
                "Adds the number outside the bracket to each term inside": lambda n: lin(n.a + n.b, n.a + n.c),
                "Does not change the sign of the second term when multiplying out by a negative": lambda n: (
                    lin(n.a * n.b, -n.a * n.c) if n.a < 0 else None
                ),
                "Ignores the coefficient of x inside the bracket when expanding": lambda n: (
                    lin(n.a, n.a * n.c) if n.b > 1 else None
                ),
            }
        ),
    ),
    Family(
        subject="Expanding Double Brackets",
        construct="Expand two binomials of the form (x + a)(x + b)",
        draw=draw_double_bracket,
        question=lambda n: f"Expand {latex(f'({expr(lin(1, n.a))})({expr(lin(1, n.b))})')}",
        correct=lambda n: ((1, X2), (n.a + n.b, "x"), (n.a * n.b, "")),
        kind=EXPRESSION,
        rules=rules(
            {
                "Only multiplies the first terms and the last terms when expanding double brackets": lambda n: (
                    (1, X2),
                    (n.a * n.b, ""),
                ),
                "Adds the numbers in the brackets to find the constant term": lambda n: (
                    (1, X2),
                    (n.a + n.b, "x"),
                    (n.a + n.b, ""),
                ),
                "Multiplies the numbers in the brackets to find the coefficient of x": lambda n: (
                    (1, X2),
                    (n.a * n.b, "x"),
                    (n.a * n.b, ""),
                ),
                "Misses out one of the middle terms when expanding double brackets": lambda n: (
                    (1, X2),
                    (n.a, "x"),
                    (n.a * n.b, ""),
                ),
                "Thinks x times x is 2x when expanding double brackets": lambda n: (
                    (n.a + n.b + 2, "x"),
                    (n.a * n.b, ""),
                ),
            }
        ),
    ),
    Family(
        subject="Linear Equations",
        construct="Solve two-step linear equations of the form ax + b = c",
        draw=draw_equation,
        question=lambda n: f"Solve {latex(f'{n.a} x+{n.b}={n.c}')}",
        correct=lambda n: n.x,
        kind=number(prefix="x="),
        rules=rules(
            {
                "Adds the constant to both sides instead of subtracting it": lambda n: Fraction(n.c + n.b, n.a),
                "Subtracts the coefficient of x instead of dividing by it": lambda n: n.c - n.b - n.a,
                "Divides only the right-hand side by the coefficient before subtracting": lambda n: (
                    Fraction(n.c, n.a) - n.b
                ),
                "Multiplies by the coefficient of x instead of dividing": lambda n: (n.c - n.b) * n.a,
                "Subtracts the constant but forgets to divide by the coefficient of x": lambda n: n.c - n.b,
            }
        ),
    ),
]
