"""Rules (a misconception as a function giving its wrong answer), families (one question kind each) and shared draws."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

from eedi.sample.kinds import Kind
from eedi.sample.text import median, smallest_prime_factor

# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Rule:
    """One misconception: its text and the wrong answer it produces from a question's numbers.

    ``apply`` gets the family's drawn numbers (a SimpleNamespace) and returns a value for the
    family's :class:`Kind`, or None when the misconception does not apply to those numbers.
    """

    misconception: str
    apply: Callable[[SimpleNamespace], Any]


@dataclass(frozen=True)
class Family:
    """A question template with its correct-answer function and the misconceptions it can host.

    ``draw`` returns the numbers for one question, or None to reject that draw.
    """

    subject: str
    construct: str
    draw: Callable[[random.Random], SimpleNamespace | None]
    question: Callable[[SimpleNamespace], str]
    correct: Callable[[SimpleNamespace], Any]
    kind: Kind
    rules: tuple[Rule, ...]


def rules(table: dict[str, Callable[[SimpleNamespace], Any]]) -> tuple[Rule, ...]:
    return tuple(Rule(name, fn) for name, fn in table.items())


ns = SimpleNamespace

# ---- draws shared by several families ---------------------------------------------------


def coprime_below(d: int, start: int = 1) -> list[int]:
    """Numerators n in [start, d) with n/d in its simplest form."""
    return [n for n in range(start, d) if math.gcd(n, d) == 1]


def proper_fraction(r: random.Random, max_den: int = 10) -> tuple[int, int]:
    """A proper fraction in its simplest form."""
    d = r.randint(2, max_den)
    return r.choice(coprime_below(d)), d


def draw_two_fractions(r: random.Random) -> SimpleNamespace | None:
    (a, b), (c, d) = proper_fraction(r), proper_fraction(r)
    return ns(a=a, b=b, c=c, d=d) if b != d else None


def draw_larger_first(r: random.Random) -> SimpleNamespace | None:
    """Two fractions with different denominators, the larger first (so a/b - c/d > 0)."""
    n = draw_two_fractions(r)
    if n is None or Fraction(n.a, n.b) == Fraction(n.c, n.d):
        return None
    if Fraction(n.a, n.b) < Fraction(n.c, n.d):
        n.a, n.b, n.c, n.d = n.c, n.d, n.a, n.b
    return n


def draw_mixed_number(r: random.Random) -> SimpleNamespace:
    w = r.randint(1, 6)
    n, d = proper_fraction(r, 9)
    return ns(w=w, n=n, d=d)


def draw_fraction_pair(r: random.Random) -> SimpleNamespace:
    (a, b), (c, d) = proper_fraction(r, 9), proper_fraction(r, 9)
    return ns(a=a, b=b, c=c, d=d)


def draw_common_factor(r: random.Random) -> SimpleNamespace:
    """p:q in simplest form scaled up by a composite m, e.g. 2:3 -> 12:18 (m = 6)."""
    q = r.randint(3, 9)
    p = r.choice(coprime_below(q))
    if r.random() < 0.5:
        p, q = q, p
    m = r.choice((4, 6, 8, 9, 10, 12, 14, 15))
    return ns(p=p, q=q, m=m, P=p * m, Q=q * m, s=smallest_prime_factor(m))


def draw_data_list(r: random.Random, n: int, repeats: int = 2) -> list[int]:
    """Distinct values plus one value repeated, so the mode is unique."""
    values = r.sample(range(1, 21), n - repeats + 1)
    values += [values[0]] * (repeats - 1)
    r.shuffle(values)
    return values


def draw_mean_list(r: random.Random) -> SimpleNamespace | None:
    v = draw_data_list(r, r.randint(5, 7))
    return ns(v=v, n=len(v)) if sum(v) % len(v) == 0 else None


def draw_median_list(r: random.Random) -> SimpleNamespace | None:
    v = draw_data_list(r, r.choice((5, 7)))
    return ns(v=v, n=len(v)) if v[len(v) // 2] != median(v) else None


def draw_two_angles(r: random.Random) -> SimpleNamespace | None:
    x, y = r.randint(15, 110), r.randint(15, 110)
    return ns(x=x, y=y) if x != y and x + y <= 160 else None


def draw_shape_sides(r: random.Random) -> SimpleNamespace:
    length, width = r.sample(range(2, 16), 2)
    return ns(l=length, w=width)


def draw_base_height_slant(r: random.Random) -> SimpleNamespace:
    h = r.randint(3, 15)
    return ns(b=r.randint(4, 20), h=h, s=h + r.randint(1, 6))


def draw_shared_factor(r: random.Random, factors: tuple[int, ...]) -> SimpleNamespace | None:
    """Two numbers g*p and g*q with p, q coprime: their HCF is g."""
    g = r.choice(factors)
    p, q = r.sample(range(2, 10), 2)
    return ns(a=g * p, b=g * q, g=g) if math.gcd(p, q) == 1 else None
