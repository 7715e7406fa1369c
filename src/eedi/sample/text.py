"""LaTeX and number formatting shared by the question families."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

# --------------------------------------------------------------------------- text helpers
# The real data writes maths as inline LaTeX, e.g. "\( \frac{3}{4}+\frac{1}{8}= \)".


def latex(body: Any) -> str:
    return f"\\( {body} \\)"


def frac(n: int, d: int) -> str:
    sign = "-" if n * d < 0 else ""
    return f"{sign}\\frac{{{abs(n)}}}{{{abs(d)}}}"


def dec(x: int | Fraction | str) -> str:
    """Exact decimal text of a number ("3.45", "-12", "0.007").

    Raises ValueError for a non-terminating decimal (more than 6 places): a rule whose result
    cannot be written as a short decimal is simply not used for that question. A ``str`` is
    passed through, for rules whose error lives in the writing (``"3.4500"``).
    """
    if isinstance(x, str):
        return x
    x = Fraction(x)
    for places in range(7):
        scaled = x * 10**places
        if scaled.denominator == 1:
            break
    else:
        raise ValueError(f"{x} is not a short decimal")
    if places == 0:
        return str(scaled.numerator)
    digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
    sign = "-" if x < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def expr(terms: Iterable[tuple[Any, str]]) -> str:
    """Write a sum of (coefficient, monomial) terms: ((3, "x"), (-2, "")) -> "3 x-2"."""
    out = ""
    for coef, mono in terms:
        if coef == 0:
            continue
        body = dec(abs(coef)) if (abs(coef) != 1 or not mono) else ""
        body = f"{body} {mono}".strip() if body and mono else body or mono
        out += ("-" if coef < 0 else "+" if out else "") + body
    return out or "0"


def lin(a: Any, b: Any, var: str = "x") -> tuple[tuple[Any, str], ...]:
    """The terms of a x + b."""
    return ((a, var), (b, ""))


def digits_of(n: int) -> list[int]:
    return [int(c) for c in str(n)]


def from_digits(ds: Iterable[int | str]) -> int:
    return int("".join(str(d) for d in ds))


def round_half_up(x: Any, places: int = 0) -> Fraction:
    """Round as taught in school (halves go up); negative ``places`` round to tens, hundreds..."""
    step = Fraction(1, 10**places) if places >= 0 else Fraction(10**-places)
    return math.floor(Fraction(x) / step + Fraction(1, 2)) * step


def truncate(x: Any, places: int = 0) -> Fraction:
    step = Fraction(1, 10**places) if places >= 0 else Fraction(10**-places)
    return math.floor(Fraction(x) / step) * step


def reduced(x: Fraction) -> tuple[int, int]:
    return x.numerator, x.denominator


def smallest_prime_factor(n: int) -> int:
    return next(p for p in range(2, n + 1) if n % p == 0)


def median(values: list[int]) -> Fraction:
    s = sorted(values)
    mid = len(s) // 2
    return Fraction(s[mid]) if len(s) % 2 else Fraction(s[mid - 1] + s[mid], 2)


def mode(values: list[int]) -> int:
    return Counter(values).most_common(1)[0][0]


def unit(name: str) -> str:
    """A unit after a number, as Eedi writes it: 3 cm -> "3 \\mathrm{~cm}"."""
    return f" \\mathrm{{~{name}}}"


def degrees(x: Any) -> str:
    return latex(f"{x}^{{\\circ}}")


def celsius(x: Any) -> str:
    return latex(f"{x}^{{\\circ}} \\mathrm{{C}}")


def percent(x: Any) -> str:
    return latex(f"{x} \\%")


CM = unit("cm")
CM2 = unit("cm") + "^{2}"
PI = latex("\\pi")
SQ_CM = "\\mathrm{cm}^{2}"


def number_list(values: list[int]) -> str:
    return latex(",".join(str(v) for v in values))


ORDINAL_SUFFIX = {1: "st", 2: "nd", 3: "rd"}


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else ORDINAL_SUFFIX.get(n % 10, 'th')}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
