"""Answer kinds: how a value is shown and when two values count as the same answer."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from eedi.sample.text import CM2, dec, expr, frac, latex, plural

# --------------------------------------------------------------------------- answer kinds


@dataclass(frozen=True)
class Kind:
    """How a family writes its answers and decides when two of them are the same.

    Numeric kinds pass ``key`` to compare values: a distractor equal in value to the correct
    answer (6/8 against 3/4) would be a second correct option, so it is rejected even though
    its text differs. Without a key the written text is compared, for families about *writing*
    a value (simplify 12/18: every distractor is equal in value to the answer).
    """

    show: Callable[[Any], str]
    key: Callable[[Any], Hashable] | None = None

    def key_of(self, value: Any, text: str) -> Hashable:
        return self.key(value) if self.key else text


def _positive(x: Any) -> Any:
    if Fraction(x) <= 0:
        raise ValueError("must be positive")
    return x


def number(prefix: str = "", suffix: str = "", positive: bool = False) -> Kind:
    check = _positive if positive else (lambda x: x)
    return Kind(show=lambda v: latex(f"{prefix}{dec(check(v))}{suffix}"), key=Fraction)


def _money_text(v: Any) -> str:
    v = Fraction(_positive(v))
    if v.denominator == 1:
        return f"£{v.numerator}"
    if (v * 100).denominator != 1:
        raise ValueError("not a whole number of pence")
    return f"£{math.floor(v)}.{int(v * 100) % 100:02d}"


MONEY = Kind(show=lambda v: latex(_money_text(v)), key=Fraction)
ANGLE = number(suffix="^{\\circ}", positive=True)
NUMBER = number()
POSITIVE = number(positive=True)


def fraction(by_value: bool = True) -> Kind:
    """Answers given as unsimplified (numerator, denominator) pairs."""

    def show(v: tuple[int, int]) -> str:
        n, d = v
        if d <= 0 or n <= 0:
            raise ValueError("not a positive fraction")
        return latex(frac(n, d))

    return Kind(show=show, key=(lambda v: Fraction(*v)) if by_value else None)


def _rational_text(v: Any) -> str:
    v = Fraction(v)
    return str(v.numerator) if v.denominator == 1 else frac(v.numerator, v.denominator)


RATIONAL = Kind(show=lambda v: latex(_rational_text(v)), key=Fraction)


EXPRESSION = Kind(show=lambda terms: latex(expr(terms)))


def _power_text(v: tuple[int, int]) -> str:
    base, exp = v
    return latex(f"{base}^{{{exp}}}")


POWER = Kind(show=_power_text, key=lambda v: Fraction(v[0]) ** v[1])


def _pi_text(v: tuple[Any, int]) -> str:
    coef, power = v
    coef_text = "" if coef == 1 else dec(_positive(coef)) + " "
    return latex(f"{coef_text}\\pi{'^{2}' if power == 2 else ''}{CM2}")


PI_AREA = Kind(show=_pi_text)


def _ratio_text(v: tuple[int, int]) -> str:
    a, b = (_positive(x) for x in v)
    if Fraction(a).denominator != 1 or Fraction(b).denominator != 1:
        raise ValueError("ratio parts must be whole numbers")
    return latex(f"{a}: {b}")


RATIO = Kind(show=_ratio_text)


def _duration_text(v: tuple[int, int]) -> str:
    hours, minutes = v
    if hours < 0 or minutes < 0 or hours == minutes == 0:
        raise ValueError("not a duration")
    parts = [plural(hours, "hour")] if hours else []
    return " ".join(parts + ([plural(minutes, "minute")] if minutes else []))


DURATION = Kind(show=_duration_text)
