"""Procedural, seed-reproducible sample data in the Kaggle "Eedi - Mining Misconceptions in
Mathematics" schema.

Why it exists: the competition data cannot be redistributed, yet every stage of the pipeline
(prepare, retrieval, reranking, evaluation) needs realistic input to run end to end, in CI and
on a laptop. ``data/sample/`` is this module's output for ``seed=0``; a test keeps the
committed files equal to the generator.

How the data is made learnable the way the real data is: a distractor is never random text.
Each misconception is a :class:`Rule`, a function that computes the wrong answer a pupil
holding that misconception would give. A :class:`Family` is one kind of question (subject,
construct, question template, correct-answer function, and the rules that apply to it). For
every question we draw the numbers, compute the correct answer, apply the rules, throw away
results that are invalid or collide with the correct answer or another option, and keep three
distractors. So the same misconception produces the same *kind* of error on different
numbers, exactly the signal a retriever has to learn.

Shape of the output (mirrors the competition):

* every rule-misconception seen in train appears ``TRAIN_USES``-ish times there;
* ``N_TEST_ONLY`` rule-misconceptions appear only in test.csv (the real test set is rich in
  misconceptions unseen in train);
* about 8% of train distractors are careless slips with no misconception (empty cell);
* misconception_mapping.csv also lists misconceptions that no question uses, and the ids are
  a seeded shuffle so they do not reveal the subject order.

Everything draws from one ``random.Random(seed)``: same seed, byte-identical files.
:func:`build_sample` returns the same data in memory, plus the test labels (never written: the
real test.csv has none) for checks and local evaluation.

    python -m eedi.sample_data --out data/sample --seed 0
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

# --------------------------------------------------------------------------- knobs

TRAIN_USES = 7  # every train rule-misconception appears at least this often in train.csv
MIN_TRAIN_QUESTIONS = 400
N_TEST_ONLY = 15  # rule-misconceptions held out of train, used only in test.csv
TEST_ONLY_USES = 2  # test questions built around each of them
N_TEST_QUESTIONS = 60
SLIP_RATE = 0.24  # chance a question swaps one distractor for a slip: 0.24 / 3 = ~8% of distractors
MAX_TRIES = 500  # number redraws before a family is declared unable to host a rule

LETTERS = ("A", "B", "C", "D")
QUESTION_COLUMNS = [
    "QuestionId", "ConstructId", "ConstructName", "SubjectId", "SubjectName",
    "CorrectAnswer", "QuestionText", *[f"Answer{x}Text" for x in LETTERS],
]
TRAIN_COLUMNS = QUESTION_COLUMNS + [f"Misconception{x}Id" for x in LETTERS]
FILES = {
    "train": "train.csv",
    "test": "test.csv",
    "misconception_mapping": "misconception_mapping.csv",
    "sample_submission": "sample_submission.csv",
}

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
    step = Fraction(1, 10**places) if places >= 0 else Fraction(10 ** -places)
    return math.floor(Fraction(x) / step + Fraction(1, 2)) * step


def truncate(x: Any, places: int = 0) -> Fraction:
    step = Fraction(1, 10**places) if places >= 0 else Fraction(10 ** -places)
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
    l, w = r.sample(range(2, 16), 2)
    return ns(l=l, w=w)


def draw_base_height_slant(r: random.Random) -> SimpleNamespace:
    h = r.randint(3, 15)
    return ns(b=r.randint(4, 20), h=h, s=h + r.randint(1, 6))


def draw_shared_factor(r: random.Random, factors: tuple[int, ...]) -> SimpleNamespace | None:
    """Two numbers g*p and g*q with p, q coprime: their HCF is g."""
    g = r.choice(factors)
    p, q = r.sample(range(2, 10), 2)
    return ns(a=g * p, b=g * q, g=g) if math.gcd(p, q) == 1 else None


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
        rules=rules({
            "Adds the numerators and adds the denominators when adding fractions":
                lambda n: (n.a + n.c, n.b + n.d),
            "Adds the numerators and multiplies the denominators when adding fractions":
                lambda n: (n.a + n.c, n.b * n.d),
            "Adds the numerators and keeps the larger denominator when adding fractions":
                lambda n: (n.a + n.c, max(n.b, n.d)),
            "Finds a common denominator but adds the original numerators without scaling them":
                lambda n: (n.a + n.c, math.lcm(n.b, n.d)),
            "Multiplies the denominators for a common denominator but only scales the first numerator":
                lambda n: (n.a * n.d + n.c, n.b * n.d),
            "Multiplies the fractions when the question asks to add them":
                lambda n: (n.a * n.c, n.b * n.d),
            "Cross-multiplies the numerators correctly but adds the denominators":
                lambda n: (n.a * n.d + n.c * n.b, n.b + n.d),
        }),
    ),
    Family(
        subject=FRACTIONS_ADD,
        construct="Subtract proper fractions with different denominators",
        draw=draw_larger_first,
        question=lambda n: latex(f"{frac(n.a, n.b)}-{frac(n.c, n.d)}="),
        correct=lambda n: reduced(Fraction(n.a, n.b) - Fraction(n.c, n.d)),
        kind=fraction(),
        rules=rules({
            "Subtracts the numerators and subtracts the denominators when subtracting fractions":
                lambda n: (n.a - n.c, n.b - n.d),
            "Subtracts the numerators and keeps the larger denominator":
                lambda n: (n.a - n.c, max(n.b, n.d)),
            "Subtracts the numerators and multiplies the denominators":
                lambda n: (n.a - n.c, n.b * n.d),
            "Multiplies the denominators but only scales the first numerator when subtracting fractions":
                lambda n: (n.a * n.d - n.c, n.b * n.d),
            "Adds the fractions when the question asks to subtract them":
                lambda n: reduced(Fraction(n.a, n.b) + Fraction(n.c, n.d)),
            "Subtracts the numerators but adds the denominators":
                lambda n: (n.a - n.c, n.b + n.d),
        }),
    ),
    Family(
        subject="Converting Mixed Numbers and Improper Fractions",
        construct="Convert a mixed number to an improper fraction",
        draw=draw_mixed_number,
        question=lambda n: f"Write {latex(f'{n.w} {frac(n.n, n.d)}')} as an improper fraction.",
        correct=lambda n: (n.w * n.d + n.n, n.d),
        kind=fraction(),
        rules=rules({
            "Multiplies the whole number by the denominator but forgets to add the numerator":
                lambda n: (n.w * n.d, n.d),
            "Adds the whole number to the numerator when converting a mixed number":
                lambda n: (n.w + n.n, n.d),
            "Multiplies the whole number by the numerator and then adds the denominator":
                lambda n: (n.w * n.n + n.d, n.d),
            "Multiplies the whole number by the numerator instead of the denominator":
                lambda n: (n.w * n.n + n.n, n.d),
            "Writes the whole number and the numerator side by side as the new numerator":
                lambda n: (from_digits([n.w, n.n]), n.d),
        }),
    ),
    Family(
        subject=FRACTIONS_MUL,
        construct="Multiply proper fractions",
        draw=draw_fraction_pair,
        question=lambda n: latex(f"{frac(n.a, n.b)} \\times {frac(n.c, n.d)}="),
        correct=lambda n: reduced(Fraction(n.a * n.c, n.b * n.d)),
        kind=fraction(),
        rules=rules({
            "Multiplies the numerators but adds the denominators when multiplying fractions":
                lambda n: (n.a * n.c, n.b + n.d),
            "Cross-multiplies instead of multiplying straight across":
                lambda n: (n.a * n.d, n.b * n.c),
            "Adds the fractions when the question asks to multiply them":
                lambda n: (n.a * n.d + n.b * n.c, n.b * n.d),
            "Multiplies the numerators but keeps the denominator of the first fraction":
                lambda n: (n.a * n.c, n.b),
            "Adds the numerators when multiplying fractions":
                lambda n: (n.a + n.c, n.b * n.d),
        }),
    ),
    Family(
        subject=FRACTIONS_MUL,
        construct="Divide proper fractions",
        draw=draw_fraction_pair,
        question=lambda n: latex(f"{frac(n.a, n.b)} \\div {frac(n.c, n.d)}="),
        correct=lambda n: reduced(Fraction(n.a * n.d, n.b * n.c)),
        kind=fraction(),
        rules=rules({
            "Multiplies the fractions when the question asks to divide them":
                lambda n: (n.a * n.c, n.b * n.d),
            "Flips the first fraction instead of the second when dividing":
                lambda n: (n.b * n.c, n.a * n.d),
            "Flips both fractions before multiplying when dividing":
                lambda n: (n.b * n.d, n.a * n.c),
            "Flips the second fraction but then adds instead of multiplying":
                lambda n: (n.a * n.c + n.d * n.b, n.b * n.c),
            "Multiplies the first fraction by the denominator of the second fraction only":
                lambda n: (n.a * n.d, n.b),
        }),
    ),
    Family(
        subject="Fractions of an Amount",
        construct="Calculate a non-unit fraction of an amount",
        draw=draw_fraction_of_amount,
        question=lambda n: f"What is {latex(frac(n.a, n.b))} of {latex(n.N)} ?",
        correct=lambda n: Fraction(n.N * n.a, n.b),
        kind=POSITIVE,
        rules=rules({
            "Divides by the numerator and multiplies by the denominator when finding a fraction of an amount":
                lambda n: Fraction(n.N * n.b, n.a),
            "Divides by the denominator but forgets to multiply by the numerator":
                lambda n: Fraction(n.N, n.b),
            "Multiplies the amount by the numerator but forgets to divide by the denominator":
                lambda n: n.N * n.a,
            "Divides the amount by the numerator of the fraction":
                lambda n: Fraction(n.N, n.a),
            "Multiplies the amount by the denominator instead of dividing by it":
                lambda n: n.N * n.b,
            "Finds the part that is left over instead of the fraction asked for":
                lambda n: n.N - Fraction(n.N * n.a, n.b),
        }),
    ),
    Family(
        subject="Simplifying Fractions",
        construct="Simplify a fraction fully by dividing by the highest common factor",
        draw=draw_common_factor,
        question=lambda n: f"Write {latex(frac(n.P, n.Q))} in its simplest form.",
        correct=lambda n: (n.p, n.q),
        # Every rule below gives an *equivalent* fraction, so compare the writing, not the value.
        kind=fraction(by_value=False),
        rules=rules({
            "Divides the numerator and denominator by a common factor that is not the highest":
                lambda n: (n.P // n.s, n.Q // n.s),
            "Subtracts the same number from the numerator and the denominator to simplify":
                lambda n: (n.P - n.m, n.Q - n.m),
            "Divides the numerator by the common factor but not the denominator":
                lambda n: (n.p, n.Q),
            "Divides the denominator by the common factor but not the numerator":
                lambda n: (n.P, n.q),
            "Writes the simplified fraction upside down":
                lambda n: (n.q, n.p),
        }),
    ),
]

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
        rules=rules({
            "Thinks subtracting a negative number is the same as subtracting a positive number":
                lambda n: n.a - n.b,
            "Thinks two negatives always give a negative answer":
                lambda n: -abs(n.a + n.b),
            "Ignores the sign of the first number when subtracting a negative":
                lambda n: abs(n.a) + n.b,
            "Thinks subtracting a negative number leaves the first number unchanged":
                lambda n: n.a,
        }),
    ),
    Family(
        subject=NEG_ADD,
        construct="Add a positive integer to a negative integer",
        draw=draw_negative_plus_positive,
        question=lambda n: latex(f"-{n.a}+{n.b}="),
        correct=lambda n: n.b - n.a,
        kind=NUMBER,
        rules=rules({
            "Adds the sizes of the numbers and keeps the negative sign":
                lambda n: -(n.a + n.b),
            "Ignores the negative sign and adds the two numbers":
                lambda n: n.a + n.b,
            "Thinks a negative number plus a positive number always gives a negative answer":
                lambda n: -abs(n.b - n.a),
            "Thinks a negative number plus a positive number always gives a positive answer":
                lambda n: abs(n.b - n.a),
            "Counts zero as an extra step when counting on across zero":
                lambda n: n.b - n.a - 1 if n.b > n.a else None,
        }),
    ),
    Family(
        subject=NEG_ADD,
        construct="Solve problems involving a rise in temperature from below zero",
        draw=lambda r: ns(a=r.randint(1, 12), b=r.randint(2, 15)),
        question=lambda n: (f"The temperature is {celsius(-n.a)}. It rises by {celsius(n.b)}. "
                            "What is the new temperature?"),
        correct=lambda n: n.b - n.a,
        kind=number(suffix="^{\\circ} \\mathrm{C}"),
        rules=rules({
            "Moves down the number line instead of up when a temperature rises":
                lambda n: -n.a - n.b,
            "Ignores the negative sign of the starting temperature":
                lambda n: n.a + n.b,
            "Counts up from zero instead of from the starting temperature":
                lambda n: n.b,
            "Finds the difference between the numbers but keeps the negative sign":
                lambda n: -abs(n.b - n.a),
        }),
    ),
    Family(
        subject=NEG_MUL,
        construct="Multiply two negative integers",
        draw=lambda r: ns(a=r.randint(2, 12), b=r.randint(2, 12)),
        question=lambda n: latex(f"(-{n.a}) \\times(-{n.b})="),
        correct=lambda n: n.a * n.b,
        kind=NUMBER,
        rules=rules({
            "Thinks multiplying two negative numbers gives a negative answer":
                lambda n: -n.a * n.b,
            "Adds two negative numbers when the question asks to multiply them":
                lambda n: -(n.a + n.b),
            "Ignores the signs and adds instead of multiplying":
                lambda n: n.a + n.b,
        }),
    ),
    Family(
        subject=NEG_MUL,
        construct="Divide a negative integer by a positive integer",
        draw=draw_exact_division,
        question=lambda n: latex(f"(-{n.a}) \\div {n.b}="),
        correct=lambda n: -n.k,
        kind=NUMBER,
        rules=rules({
            "Thinks dividing a negative number by a positive number gives a positive answer":
                lambda n: n.k,
            "Subtracts instead of dividing with negative numbers":
                lambda n: -n.a - n.b,
            "Divides the smaller number by the larger number":
                lambda n: -Fraction(n.b, n.a),
            "Multiplies instead of dividing with negative numbers":
                lambda n: -n.a * n.b,
        }),
    ),
]

BIDMAS = "BIDMAS"

FAMILIES_BIDMAS = [
    Family(
        subject=BIDMAS,
        construct="Use the order of operations with brackets and multiplication",
        draw=lambda r: ns(a=r.randint(20, 60), b=r.randint(2, 5), c=r.randint(1, 6), d=r.randint(1, 6)),
        question=lambda n: latex(f"{n.a}-{n.b} \\times({n.c}+{n.d})="),
        correct=lambda n: n.a - n.b * (n.c + n.d),
        kind=NUMBER,
        rules=rules({
            "Carries out operations from left to right regardless of priority order":
                lambda n: (n.a - n.b) * n.c + n.d,
            "Does the subtraction before the multiplication":
                lambda n: (n.a - n.b) * (n.c + n.d),
            "Ignores the brackets and multiplies first":
                lambda n: n.a - n.b * n.c + n.d,
            "Multiplies only the first term inside the brackets":
                lambda n: n.a - (n.b * n.c + n.d),
        }),
    ),
    Family(
        subject=BIDMAS,
        construct="Use the order of operations with indices, multiplication and addition",
        draw=lambda r: ns(a=r.randint(2, 9), b=r.randint(2, 6), c=r.randint(2, 5)),
        question=lambda n: latex(f"{n.a}+{n.b}^{{2}} \\times {n.c}="),
        correct=lambda n: n.a + n.b**2 * n.c,
        kind=NUMBER,
        rules=rules({
            "Adds before multiplying, working from left to right":
                lambda n: (n.a + n.b**2) * n.c,
            "Multiplies before applying the power":
                lambda n: n.a + (n.b * n.c) ** 2,
            "Thinks squaring a number means multiplying it by two":
                lambda n: n.a + 2 * n.b * n.c,
            "Adds before squaring":
                lambda n: (n.a + n.b) ** 2 * n.c,
        }),
    ),
]

PLACE_VALUE = "Place Value"


def draw_decimal_digits(r: random.Random) -> SimpleNamespace:
    """A number like 3.472 (distinct non-zero digits) and one of its decimal places."""
    ds = r.sample(range(1, 10), 4)
    place = r.randint(1, 3)
    return ns(x=Fraction(from_digits(ds), 1000), digit=ds[place], place=place)


def draw_integer_and_power_of_ten(r: random.Random) -> SimpleNamespace | None:
    x = r.randint(101, 9999)
    return ns(x=x, k=r.randint(1, 3)) if x % 10 else None


def draw_round_1dp(r: random.Random) -> SimpleNamespace | None:
    k = r.randint(1001, 999999)
    return ns(x=Fraction(k, 1000)) if k % 10 else None


def draw_round_sf(r: random.Random) -> SimpleNamespace:
    N = r.randint(10000, 99999)
    return ns(N=N, s=r.randint(1, 3), L=len(str(N)))


def round_sf(N: int, s: int) -> Fraction:
    return round_half_up(N, s - len(str(N)))


FAMILIES_PLACE_VALUE = [
    Family(
        subject=PLACE_VALUE,
        construct="Multiply a decimal by 10, 100 or 1000",
        draw=lambda r: ns(x=Fraction(r.randint(101, 9999), 10 ** r.randint(1, 2)), k=r.randint(1, 3)),
        question=lambda n: latex(f"{dec(n.x)} \\times {10 ** n.k}="),
        correct=lambda n: n.x * 10**n.k if n.x.denominator != 1 else None,
        kind=POSITIVE,
        rules=rules({
            "Moves the decimal point the wrong way when multiplying by a power of ten":
                lambda n: n.x / 10**n.k,
            "Moves the decimal point one place fewer than the number of zeros when multiplying":
                lambda n: n.x * 10 ** (n.k - 1),
            "Moves the decimal point one place too many when multiplying by a power of ten":
                lambda n: n.x * 10 ** (n.k + 1),
            "Writes zeros on the end of a decimal to multiply it by a power of ten":
                lambda n: dec(n.x) + "0" * n.k,
            "Multiplies only the whole-number part of a decimal by the power of ten":
                lambda n: math.floor(n.x) * 10**n.k + (n.x - math.floor(n.x)),
        }),
    ),
    Family(
        subject=PLACE_VALUE,
        construct="Divide an integer by 10, 100 or 1000",
        draw=draw_integer_and_power_of_ten,
        question=lambda n: latex(f"{n.x} \\div {10 ** n.k}="),
        correct=lambda n: Fraction(n.x, 10**n.k),
        kind=POSITIVE,
        rules=rules({
            "Multiplies instead of dividing by a power of ten":
                lambda n: n.x * 10**n.k,
            "Moves the decimal point one place fewer than the number of zeros when dividing":
                lambda n: Fraction(n.x, 10 ** (n.k - 1)),
            "Moves the decimal point one place too many when dividing by a power of ten":
                lambda n: Fraction(n.x, 10 ** (n.k + 1)),
            "Crosses off digits from the end of the number to divide by a power of ten":
                lambda n: n.x // 10**n.k,
        }),
    ),
    Family(
        subject=PLACE_VALUE,
        construct="Identify the value of a digit after the decimal point",
        draw=draw_decimal_digits,
        question=lambda n: f"What is the value of the {latex(n.digit)} in {latex(dec(n.x))} ?",
        correct=lambda n: Fraction(n.digit, 10**n.place),
        kind=POSITIVE,
        rules=rules({
            "Gives the value of the column one place to the left":
                lambda n: Fraction(n.digit, 10 ** (n.place - 1)),
            "Gives the value of the column one place to the right":
                lambda n: Fraction(n.digit, 10 ** (n.place + 1)),
            "Gives the digit itself rather than its place value":
                lambda n: n.digit,
            "Thinks the columns after the decimal point are tens, hundreds and thousands":
                lambda n: n.digit * 10**n.place,
        }),
    ),
    Family(
        subject="Rounding to Decimal Places",
        construct="Round a number to one decimal place",
        draw=draw_round_1dp,
        question=lambda n: f"Round {latex(dec(n.x))} to one decimal place.",
        correct=lambda n: round_half_up(n.x, 1),
        kind=POSITIVE,
        rules=rules({
            "Truncates instead of rounding":
                lambda n: truncate(n.x, 1),
            "Rounds to two decimal places instead of one":
                lambda n: round_half_up(n.x, 2),
            "Rounds to the nearest whole number instead of to one decimal place":
                lambda n: round_half_up(n.x, 0),
            "Always rounds up, even when the next digit is less than 5":
                lambda n: truncate(n.x, 1) + Fraction(1, 10),
            "Rounds to one significant figure instead of one decimal place":
                lambda n: round_half_up(n.x, 1 - len(str(math.floor(n.x)))),
            "Rounds to the nearest ten instead of to one decimal place":
                lambda n: round_half_up(n.x, -1),
        }),
    ),
    Family(
        subject="Rounding to Significant Figures",
        construct="Round an integer to a given number of significant figures",
        draw=draw_round_sf,
        question=lambda n: f"Round {latex(n.N)} to {plural(n.s, 'significant figure')}.",
        correct=lambda n: round_sf(n.N, n.s),
        kind=POSITIVE,
        rules=rules({
            "Leaves out the place-holding zeros when rounding to significant figures":
                lambda n: round_sf(n.N, n.s) / 10 ** (n.L - n.s),
            "Truncates instead of rounding to significant figures":
                lambda n: truncate(n.N, n.s - n.L),
            "Rounds to one more significant figure than asked":
                lambda n: round_sf(n.N, n.s + 1),
            "Rounds to one fewer significant figure than asked":
                lambda n: round_sf(n.N, n.s - 1) if n.s > 1 else None,
            "Counts significant figures from the right-hand end of the number":
                lambda n: round_half_up(n.N, -n.s),
        }),
    ),
]

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
        rules=rules({
            "Divides the amount by the percentage":
                lambda n: Fraction(n.y, n.x),
            "Finds 10% of the amount whatever the percentage asked for":
                lambda n: Fraction(n.y, 10),
            "Multiplies by the percentage but forgets to divide by 100":
                lambda n: n.x * n.y,
            "Adds the percentage to the amount as if it were a number":
                lambda n: n.x + n.y,
            "Finds what is left after taking the percentage away":
                lambda n: n.y - Fraction(n.x * n.y, 100),
        }),
    ),
    Family(
        subject=PERCENT_AMOUNT,
        construct="Increase an amount by a percentage",
        draw=lambda r: ns(x=r.choice((2, 4, 5, 6, 8, 12, 15, 20, 25, 30, 35)), y=50 * r.randint(1, 20)),
        question=lambda n: f"Increase {latex(_money_text(n.y))} by {percent(n.x)}.",
        correct=lambda n: Fraction(n.y * (100 + n.x), 100),
        kind=MONEY,
        rules=rules({
            "Adds the percentage on as an amount of money":
                lambda n: n.y + n.x,
            "Finds the percentage but forgets to add it to the original amount":
                lambda n: Fraction(n.x * n.y, 100),
            "Decreases the amount when the question asks for an increase":
                lambda n: Fraction(n.y * (100 - n.x), 100),
            "Thinks increasing by x% means multiplying by 1.x":
                lambda n: n.y * Fraction(f"1.{n.x}"),
        }),
    ),
    Family(
        subject="Converting between Fractions and Percentages",
        construct="Convert a fraction to a percentage",
        draw=draw_fraction_with_percentage_denominator,
        question=lambda n: f"Write {latex(frac(n.a, n.b))} as a percentage.",
        correct=lambda n: Fraction(100 * n.a, n.b),
        kind=number(suffix=" \\%", positive=True),
        rules=rules({
            "Thinks the numerator of a fraction is its percentage":
                lambda n: n.a,
            "Writes the numerator and denominator side by side as a percentage":
                lambda n: from_digits([n.a, n.b]),
            "Finds the percentage for one part but forgets to multiply by the numerator":
                lambda n: Fraction(100, n.b),
            "Thinks a fraction becomes a percentage by multiplying the numerator by 10":
                lambda n: 10 * n.a,
            "Divides the denominator by the numerator to convert to a percentage":
                lambda n: Fraction(n.b, n.a),
        }),
    ),
    Family(
        subject="Converting between Decimals and Percentages",
        construct="Convert a percentage to a decimal",
        draw=lambda r: ns(x=r.randint(1, 99)),
        question=lambda n: f"Write {percent(n.x)} as a decimal.",
        correct=lambda n: Fraction(n.x, 100),
        kind=POSITIVE,
        rules=rules({
            "Divides by 10 instead of 100 to convert a percentage to a decimal":
                lambda n: Fraction(n.x, 10),
            "Divides by 1000 instead of 100 to convert a percentage to a decimal":
                lambda n: Fraction(n.x, 1000),
            "Thinks the percentage number is already the decimal":
                lambda n: n.x,
            "Multiplies by 100 instead of dividing by 100 to convert a percentage to a decimal":
                lambda n: 100 * n.x,
        }),
    ),
]

POLYGON_NAMES = {5: "a pentagon", 6: "a hexagon", 7: "a heptagon", 8: "an octagon", 9: "a nonagon",
                 10: "a decagon", 12: "a dodecagon"}

def draw_three_angles(r: random.Random) -> SimpleNamespace | None:
    x, y, z = r.sample(range(30, 151), 3)
    return ns(x=x, y=y, z=z) if x + y + z < 340 else None


def polygon_name(sides: int) -> str:
    return POLYGON_NAMES.get(sides, f"a polygon with {sides} sides")


FAMILIES_ANGLES = [
    Family(
        subject="Angles in Triangles",
        construct="Find a missing angle in a triangle",
        draw=draw_two_angles,
        question=lambda n: (f"A triangle has angles of {degrees(n.x)} and "
                            f"{degrees(n.y)}. What is the size of the third angle?"),
        correct=lambda n: 180 - n.x - n.y,
        kind=ANGLE,
        rules=rules({
            "Thinks the angles in a triangle add up to 360 degrees":
                lambda n: 360 - n.x - n.y,
            "Thinks the angles in a triangle add up to 90 degrees":
                lambda n: 90 - n.x - n.y,
            "Thinks the missing angle in a triangle is the sum of the other two":
                lambda n: n.x + n.y,
            "Subtracts only one of the known angles from 180 degrees in a triangle":
                lambda n: 180 - n.x,
            "Thinks the missing angle in a triangle is the difference of the other two":
                lambda n: abs(n.x - n.y),
        }),
    ),
    Family(
        subject="Basic Angle Facts (straight line, opposite, around a point, etc)",
        construct="Find a missing angle on a straight line",
        draw=draw_two_angles,
        question=lambda n: (f"Three angles lie on a straight line. Two of them are {degrees(n.x)} "
                            f"and {degrees(n.y)}. What is the size of the third angle?"),
        correct=lambda n: 180 - n.x - n.y,
        kind=ANGLE,
        rules=rules({
            "Thinks angles on a straight line add up to 360 degrees":
                lambda n: 360 - n.x - n.y,
            "Thinks angles on a straight line add up to 90 degrees":
                lambda n: 90 - n.x - n.y,
            "Forgets to subtract one of the known angles on a straight line":
                lambda n: 180 - n.x,
            "Assumes the missing angle on a straight line equals the largest angle given":
                lambda n: max(n.x, n.y),
        }),
    ),
    Family(
        subject="Basic Angle Facts (straight line, opposite, around a point, etc)",
        construct="Find a missing angle around a point",
        draw=draw_three_angles,
        question=lambda n: (f"Four angles meet at a point. Three of them are {degrees(n.x)}, "
                            f"{degrees(n.y)} and {degrees(n.z)}. "
                            "What is the size of the fourth angle?"),
        correct=lambda n: 360 - n.x - n.y - n.z,
        kind=ANGLE,
        rules=rules({
            "Thinks angles around a point add up to 180 degrees":
                lambda n: 180 - n.x - n.y - n.z,
            "Forgets to subtract one of the known angles around a point":
                lambda n: 360 - n.x - n.y,
            "Subtracts only the largest known angle from 360 degrees":
                lambda n: 360 - max(n.x, n.y, n.z),
            "Gives the total of the known angles instead of the missing angle":
                lambda n: n.x + n.y + n.z,
        }),
    ),
    Family(
        subject="Angles in Polygons",
        construct="Calculate the sum of the interior angles of a polygon",
        draw=lambda r: ns(n=r.randint(5, 36), wording=r.randint(0, 1)),
        question=lambda n: (f"What is the sum of the interior angles of {polygon_name(n.n)}?" if n.wording
                            else f"A polygon has {n.n} sides. What do its interior angles add up to?"),
        correct=lambda n: (n.n - 2) * 180,
        kind=ANGLE,
        rules=rules({
            "Thinks the interior angles of a polygon add up to 180 degrees times the number of sides":
                lambda n: n.n * 180,
            "Thinks the interior angles of any polygon add up to 360 degrees":
                lambda n: 360,
            "Uses one less than the number of sides, times 180 degrees, for the interior angle sum":
                lambda n: (n.n - 1) * 180,
            "Multiplies two less than the number of sides by 360 degrees instead of 180":
                lambda n: (n.n - 2) * 360,
            "Confuses the sum of the interior angles with one exterior angle":
                lambda n: Fraction(360, n.n) if 360 % n.n == 0 else None,
        }),
    ),
]

AREA = "Area of Simple Shapes"


def _lengths(**sides: int) -> dict[str, str]:
    return {k: latex(f"{v}{CM}") for k, v in sides.items()}


FAMILIES_AREA = [
    Family(
        subject=AREA,
        construct="Calculate the area of a rectangle",
        draw=draw_shape_sides,
        question=lambda n: "A rectangle has length {l} and width {w}. What is its area?".format(
            **_lengths(l=n.l, w=n.w)),
        correct=lambda n: n.l * n.w,
        kind=number(suffix=CM2, positive=True),
        rules=rules({
            "Calculates the perimeter when asked for the area":
                lambda n: 2 * (n.l + n.w),
            "Adds the length and width to find the area of a rectangle":
                lambda n: n.l + n.w,
            "Halves the product of the sides as if the rectangle were a triangle":
                lambda n: Fraction(n.l * n.w, 2),
            "Thinks the area of a rectangle is its length squared":
                lambda n: n.l * n.l,
        }),
    ),
    Family(
        subject="Perimeter",
        construct="Calculate the perimeter of a rectangle",
        draw=draw_shape_sides,
        question=lambda n: "A rectangle has length {l} and width {w}. What is its perimeter?".format(
            **_lengths(l=n.l, w=n.w)),
        correct=lambda n: 2 * (n.l + n.w),
        kind=number(suffix=CM, positive=True),
        rules=rules({
            "Calculates the area when asked for the perimeter":
                lambda n: n.l * n.w,
            "Adds only the two labelled sides to find the perimeter":
                lambda n: n.l + n.w,
            "Counts one pair of sides twice but the other side only once":
                lambda n: 2 * n.l + n.w,
            "Thinks the perimeter of a rectangle is four times its longest side":
                lambda n: 4 * max(n.l, n.w),
        }),
    ),
    Family(
        subject=AREA,
        construct="Calculate the area of a triangle using base and perpendicular height",
        draw=draw_base_height_slant,
        question=lambda n: ("A triangle has a base of {b}, a perpendicular height of {h} and a sloping side of "
                            "{s}. What is its area?").format(**_lengths(b=n.b, h=n.h, s=n.s)),
        correct=lambda n: Fraction(n.b * n.h, 2),
        kind=number(suffix=CM2, positive=True),
        rules=rules({
            "Does not divide by 2 when finding the area of a triangle":
                lambda n: n.b * n.h,
            "Adds the base and the height and then halves":
                lambda n: Fraction(n.b + n.h, 2),
            "Uses the sloping side instead of the perpendicular height for the area of a triangle":
                lambda n: Fraction(n.b * n.s, 2),
            "Halves both the base and the height of a triangle":
                lambda n: Fraction(n.b * n.h, 4),
            "Divides by 3 instead of 2 for the area of a triangle":
                lambda n: Fraction(n.b * n.h, 3),
        }),
    ),
    Family(
        subject="Area of a Circle",
        construct="Calculate the area of a circle in terms of pi from its radius",
        draw=lambda r: ns(r=r.randint(2, 25), wording=r.randint(0, 1)),
        question=lambda n: (f"A circle has a radius of {latex(f'{n.r}{CM}')}. What is its area? "
                            f"Give your answer in terms of {PI}." if n.wording else
                            f"Work out the area of a circle of radius {latex(f'{n.r}{CM}')}. "
                            f"Leave your answer in terms of {PI}."),
        correct=lambda n: (n.r**2, 1),
        kind=PI_AREA,
        rules=rules({
            "Uses the circumference formula when finding the area of a circle":
                lambda n: (2 * n.r, 1),
            "Uses the diameter instead of the radius in the area formula":
                lambda n: (4 * n.r**2, 1),
            "Squares pi as well as the radius":
                lambda n: (n.r**2, 2),
            "Does not square the radius when finding the area of a circle":
                lambda n: (n.r, 1),
            "Halves the radius before squaring it":
                lambda n: (Fraction(n.r**2, 4), 1),
        }),
    ),
    Family(
        subject=AREA,
        construct="Calculate the area of a parallelogram",
        draw=draw_base_height_slant,
        question=lambda n: ("A parallelogram has a base of {b}, a perpendicular height of {h} and a sloping "
                            "side of {s}. What is its area?").format(**_lengths(b=n.b, h=n.h, s=n.s)),
        correct=lambda n: n.b * n.h,
        kind=number(suffix=CM2, positive=True),
        rules=rules({
            "Uses the sloping side instead of the perpendicular height for the area of a parallelogram":
                lambda n: n.b * n.s,
            "Halves the product of the base and height for a parallelogram":
                lambda n: Fraction(n.b * n.h, 2),
            "Adds the base and the perpendicular height of a parallelogram":
                lambda n: n.b + n.h,
            "Calculates the perimeter of a parallelogram instead of its area":
                lambda n: 2 * (n.b + n.s),
        }),
    ),
]


def draw_linear_terms(r: random.Random) -> SimpleNamespace:
    return ns(a=r.randint(2, 9), b=r.randint(1, 9), c=r.randint(2, 9), d=r.randint(1, 9))


def draw_bracket(r: random.Random) -> SimpleNamespace:
    return ns(a=r.choice([k for k in range(-9, 10) if abs(k) >= 2]), b=r.randint(1, 6),
              c=r.choice([k for k in range(-9, 10) if k]))


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
        rules=rules({
            "Combines the x terms and the number terms into a single term":
                lambda n: ((n.a + n.c + n.b - n.d, "x"),),
            "Ignores the subtraction sign in front of a term when collecting like terms":
                lambda n: lin(n.a + n.c, n.b + n.d),
            "Collects the x terms but leaves out the number terms":
                lambda n: ((n.a + n.c, "x"),),
            "Multiplies the coefficients of like terms instead of adding them":
                lambda n: lin(n.a * n.c, n.b - n.d),
            "Thinks adding like terms increases the power":
                lambda n: lin(n.a + n.c, n.b - n.d, X2),
        }),
    ),
    Family(
        subject="Simplifying Expressions by Collecting Like Terms",
        construct="Multiply two algebraic terms with the same letter",
        draw=lambda r: ns(p=r.randint(2, 9), q=r.randint(2, 9), v=r.choice("abmpy")),
        question=lambda n: "Simplify " + latex(f"{n.p} {n.v} \\times {n.q} {n.v}"),
        correct=lambda n: ((n.p * n.q, f"{n.v}^{{2}}"),),
        kind=EXPRESSION,
        rules=rules({
            "Adds the coefficients when multiplying algebraic terms":
                lambda n: ((n.p + n.q, f"{n.v}^{{2}}"),),
            "Does not square the letter when multiplying it by itself":
                lambda n: ((n.p * n.q, n.v),),
            "Thinks multiplying a letter by itself doubles it":
                lambda n: ((2 * n.p * n.q, n.v),),
            "Adds algebraic terms when the question asks to multiply them":
                lambda n: ((n.p + n.q, n.v),),
        }),
    ),
    Family(
        subject="Expanding Single Brackets",
        construct="Expand a single bracket with a number outside",
        draw=draw_bracket,
        question=lambda n: f"Expand {latex(f'{n.a}({expr(lin(n.b, n.c))})')}",
        correct=lambda n: lin(n.a * n.b, n.a * n.c),
        kind=EXPRESSION,
        rules=rules({
            "Only multiplies the first term in the bracket by the number outside":
                lambda n: lin(n.a * n.b, n.c),
            "Only multiplies the second term in the bracket by the number outside":
                lambda n: lin(n.b, n.a * n.c),
            "Adds the number outside the bracket to each term inside":
                lambda n: lin(n.a + n.b, n.a + n.c),
            "Does not change the sign of the second term when multiplying out by a negative":
                lambda n: lin(n.a * n.b, -n.a * n.c) if n.a < 0 else None,
            "Ignores the coefficient of x inside the bracket when expanding":
                lambda n: lin(n.a, n.a * n.c) if n.b > 1 else None,
        }),
    ),
    Family(
        subject="Expanding Double Brackets",
        construct="Expand two binomials of the form (x + a)(x + b)",
        draw=draw_double_bracket,
        question=lambda n: f"Expand {latex(f'({expr(lin(1, n.a))})({expr(lin(1, n.b))})')}",
        correct=lambda n: ((1, X2), (n.a + n.b, "x"), (n.a * n.b, "")),
        kind=EXPRESSION,
        rules=rules({
            "Only multiplies the first terms and the last terms when expanding double brackets":
                lambda n: ((1, X2), (n.a * n.b, "")),
            "Adds the numbers in the brackets to find the constant term":
                lambda n: ((1, X2), (n.a + n.b, "x"), (n.a + n.b, "")),
            "Multiplies the numbers in the brackets to find the coefficient of x":
                lambda n: ((1, X2), (n.a * n.b, "x"), (n.a * n.b, "")),
            "Misses out one of the middle terms when expanding double brackets":
                lambda n: ((1, X2), (n.a, "x"), (n.a * n.b, "")),
            "Thinks x times x is 2x when expanding double brackets":
                lambda n: ((n.a + n.b + 2, "x"), (n.a * n.b, "")),
        }),
    ),
    Family(
        subject="Linear Equations",
        construct="Solve two-step linear equations of the form ax + b = c",
        draw=draw_equation,
        question=lambda n: f"Solve {latex(f'{n.a} x+{n.b}={n.c}')}",
        correct=lambda n: n.x,
        kind=number(prefix="x="),
        rules=rules({
            "Adds the constant to both sides instead of subtracting it":
                lambda n: Fraction(n.c + n.b, n.a),
            "Subtracts the coefficient of x instead of dividing by it":
                lambda n: n.c - n.b - n.a,
            "Divides only the right-hand side by the coefficient before subtracting":
                lambda n: Fraction(n.c, n.a) - n.b,
            "Multiplies by the coefficient of x instead of dividing":
                lambda n: (n.c - n.b) * n.a,
            "Subtracts the constant but forgets to divide by the coefficient of x":
                lambda n: n.c - n.b,
        }),
    ),
]

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
        rules=rules({
            "Multiplies the powers when multiplying numbers with the same base":
                lambda n: (n.a, n.m * n.n),
            "Multiplies the bases as well as adding the powers":
                lambda n: (n.a * n.a, n.m + n.n),
            "Multiplies both the bases and the powers":
                lambda n: (n.a * n.a, n.m * n.n),
            "Adds the bases as well as adding the powers":
                lambda n: (2 * n.a, n.m + n.n),
            "Subtracts the powers when multiplying numbers with the same base":
                lambda n: (n.a, n.m - n.n) if n.m != n.n else None,
        }),
    ),
    Family(
        subject=INDICES,
        construct="Divide powers with the same base",
        draw=draw_division_powers,
        question=lambda n: "Write as a single power: " + latex(f"{n.a}^{{{n.m}}} \\div {n.a}^{{{n.n}}}"),
        correct=lambda n: (n.a, n.m - n.n),
        kind=POWER,
        rules=rules({
            "Divides the powers when dividing numbers with the same base":
                lambda n: (n.a, n.m // n.n) if n.m % n.n == 0 else None,
            "Adds the powers when dividing numbers with the same base":
                lambda n: (n.a, n.m + n.n),
            "Divides the bases as well as subtracting the powers":
                lambda n: (1, n.m - n.n),
            "Subtracts the powers the wrong way round when dividing":
                lambda n: (n.a, n.n - n.m),
            "Multiplies the powers when dividing numbers with the same base":
                lambda n: (n.a, n.m * n.n),
        }),
    ),
    Family(
        subject="Squares, Cubes and Other Powers",
        construct="Calculate a positive integer power of a number",
        draw=lambda r: ns(b=r.randint(2, 9), n=r.randint(2, 5)),
        question=lambda n: f"Work out {latex(f'{n.b}^{{{n.n}}}')}",
        correct=lambda n: n.b**n.n,
        kind=POSITIVE,
        rules=rules({
            "Multiplies the base by the power":
                lambda n: n.b * n.n,
            "Multiplies the base by itself one time too many":
                lambda n: n.b ** (n.n + 1),
            "Multiplies the base by itself one time too few":
                lambda n: n.b ** (n.n - 1),
            "Swaps the base and the power":
                lambda n: n.n**n.b,
            "Adds the base and the power":
                lambda n: n.b + n.n,
        }),
    ),
    Family(
        subject="Negative Indices",
        construct="Evaluate a number raised to a negative power",
        draw=lambda r: ns(a=r.randint(2, 10), n=r.randint(2, 4)),
        question=lambda n: f"Work out {latex(f'{n.a}^{{-{n.n}}}')}",
        correct=lambda n: Fraction(1, n.a**n.n),
        kind=RATIONAL,
        rules=rules({
            "Thinks a negative power gives a negative answer":
                lambda n: -(n.a**n.n),
            "Multiplies the base by the negative power":
                lambda n: -n.a * n.n,
            "Thinks a negative power means dividing the base by the power":
                lambda n: Fraction(n.a, n.n),
            "Ignores the negative sign in the power":
                lambda n: n.a**n.n,
            "Thinks a negative power means one over the base times the power":
                lambda n: Fraction(1, n.a * n.n),
        }),
    ),
]


def draw_ratio_share(r: random.Random) -> SimpleNamespace | None:
    a = r.randint(1, 5)
    b = r.randint(a + 1, 9)
    return ns(a=a, b=b, N=(a + b) * r.randint(2, 12)) if math.gcd(a, b) == 1 else None


def draw_proportion(r: random.Random) -> SimpleNamespace:
    q1, q2 = sorted(r.sample(range(2, 16), 2))
    return ns(q1=q1, q2=q2, unit=Fraction(r.randint(2, 20), 2),
              item=r.choice(("pens", "pencils", "rulers", "notebooks", "rubbers")))


FAMILIES_RATIO = [
    Family(
        subject="Sharing in a Ratio",
        construct="Share an amount in a given two-part ratio",
        draw=draw_ratio_share,
        question=lambda n: (f"{latex(_money_text(n.N))} is shared in the ratio {latex(f'{n.a}: {n.b}')}. "
                            "How much is the larger share?"),
        correct=lambda n: Fraction(n.N * n.b, n.a + n.b),
        kind=MONEY,
        rules=rules({
            "Shares the amount equally instead of in the ratio":
                lambda n: Fraction(n.N, 2),
            "Gives the smaller share instead of the larger share":
                lambda n: Fraction(n.N * n.a, n.a + n.b),
            "Finds the value of one part but does not multiply by the number of parts":
                lambda n: Fraction(n.N, n.a + n.b),
            "Divides the amount by the larger number in the ratio":
                lambda n: Fraction(n.N, n.b),
        }),
    ),
    Family(
        subject="Simplifying Ratios",
        construct="Write a ratio in its simplest form",
        draw=draw_common_factor,
        question=lambda n: f"Write the ratio {latex(f'{n.P}: {n.Q}')} in its simplest form.",
        correct=lambda n: (n.p, n.q),
        kind=RATIO,
        rules=rules({
            "Divides both parts of the ratio by a common factor that is not the highest":
                lambda n: (n.P // n.s, n.Q // n.s),
            "Divides only one part of the ratio by the common factor":
                lambda n: (n.p, n.Q),
            "Writes the simplified ratio the wrong way round":
                lambda n: (n.q, n.p),
            "Subtracts the same number from both parts of a ratio to simplify it":
                lambda n: (n.P - n.m, n.Q - n.m),
        }),
    ),
    Family(
        subject="Direct Proportion",
        construct="Solve a direct proportion problem about cost",
        draw=draw_proportion,
        question=lambda n: (f"{n.q1} {n.item} cost {latex(_money_text(n.q1 * n.unit))}. "
                            f"How much do {n.q2} {n.item} cost?"),
        correct=lambda n: n.q2 * n.unit,
        kind=MONEY,
        rules=rules({
            "Adds the difference in the number of items to the cost (additive reasoning)":
                lambda n: n.q1 * n.unit + (n.q2 - n.q1),
            "Multiplies the total cost by the new number of items":
                lambda n: n.q1 * n.unit * n.q2,
            "Multiplies the total cost by the difference in the number of items":
                lambda n: n.q1 * n.unit * (n.q2 - n.q1),
            "Divides the total cost by the new number of items":
                lambda n: Fraction(n.q1 * n.unit, n.q2),
            "Finds the cost of one item but does not multiply by the new number of items":
                lambda n: n.unit,
        }),
    ),
]

AVERAGES = "Averages (mean, median, mode) from a List of Data"


def draw_bag_of_counters(r: random.Random) -> SimpleNamespace:
    counts = {colour: r.randint(1, 9) for colour in ("red", "blue", "green")}
    return ns(counts=counts, colour=r.choice(list(counts)))


def spread(v: list[int]) -> int:
    return max(v) - min(v)


FAMILIES_STATISTICS = [
    Family(
        subject=AVERAGES,
        construct="Calculate the mean from a list of data",
        draw=draw_mean_list,
        question=lambda n: f"What is the mean of these numbers? {number_list(n.v)}",
        correct=lambda n: Fraction(sum(n.v), n.n),
        kind=POSITIVE,
        rules=rules({
            "Finds the median instead of the mean":
                lambda n: median(n.v),
            "Divides the total by one less than the number of values":
                lambda n: Fraction(sum(n.v), n.n - 1),
            "Adds up the values but does not divide by how many there are":
                lambda n: sum(n.v),
            "Finds the mode instead of the mean":
                lambda n: mode(n.v),
            "Finds the range instead of the mean":
                lambda n: spread(n.v),
            "Finds the midpoint of the largest and smallest values instead of the mean":
                lambda n: Fraction(max(n.v) + min(n.v), 2),
        }),
    ),
    Family(
        subject=AVERAGES,
        construct="Find the median from an unordered list of data",
        draw=draw_median_list,
        question=lambda n: f"What is the median of these numbers? {number_list(n.v)}",
        correct=lambda n: median(n.v),
        kind=POSITIVE,
        rules=rules({
            "Finds the middle value of the list without putting it in order first":
                lambda n: n.v[n.n // 2],
            "Finds the mean instead of the median":
                lambda n: Fraction(sum(n.v), n.n),
            "Gives the position of the median instead of its value":
                lambda n: Fraction(n.n + 1, 2),
            "Finds the mode instead of the median":
                lambda n: mode(n.v),
            "Finds the range instead of the median":
                lambda n: spread(n.v),
        }),
    ),
    Family(
        subject=AVERAGES,
        construct="Find the mode from a list of data",
        draw=lambda r: ns(v=draw_data_list(r, r.randint(6, 8), repeats=r.choice((2, 3)))),
        question=lambda n: f"What is the mode of these numbers? {number_list(n.v)}",
        correct=lambda n: mode(n.v),
        kind=POSITIVE,
        rules=rules({
            "Gives the frequency of the mode instead of its value":
                lambda n: Counter(n.v)[mode(n.v)],
            "Finds the median instead of the mode":
                lambda n: median(n.v),
            "Gives the largest value instead of the mode":
                lambda n: max(n.v),
            "Finds the range instead of the mode":
                lambda n: spread(n.v),
        }),
    ),
    Family(
        subject="Range from a List of Data",
        construct="Calculate the range from a list of data",
        draw=lambda r: ns(v=r.sample(range(1, 40), r.randint(5, 7))),
        question=lambda n: f"What is the range of these numbers? {number_list(n.v)}",
        correct=lambda n: spread(n.v),
        kind=NUMBER,
        rules=rules({
            "Gives the largest value instead of the range":
                lambda n: max(n.v),
            "Subtracts the first value in the list from the last value":
                lambda n: n.v[-1] - n.v[0],
            "Adds the largest and smallest values to find the range":
                lambda n: max(n.v) + min(n.v),
            "Finds the median instead of the range":
                lambda n: median(n.v),
        }),
    ),
    Family(
        subject="Probability of Single Events",
        construct="Find the probability of an event not happening",
        draw=lambda r: ns(p=Fraction(10 * r.randint(1, 9) + r.randint(1, 9), 100)),
        question=lambda n: (f"The probability that it rains tomorrow is {latex(dec(n.p))}. "
                            "What is the probability that it does not rain tomorrow?"),
        correct=lambda n: 1 - n.p,
        kind=POSITIVE,
        rules=rules({
            "Subtracts the probability from 100 instead of 1":
                lambda n: 100 - n.p,
            # 1 - 0.35 -> 0.75: both decimal digits are non-zero (see draw), so 10 - d is one digit.
            "Subtracts each decimal digit from 10 when subtracting from 1":
                lambda n: Fraction(from_digits(10 - d for d in digits_of(int(n.p * 100))), 100),
            "Gives the probability of the event instead of the probability of it not happening":
                lambda n: n.p,
            "Thinks there are only two outcomes so the probability must be 0.5":
                lambda n: Fraction(1, 2),
        }),
    ),
    Family(
        subject="Probability of Single Events",
        construct="Calculate the probability of an outcome from counts",
        draw=draw_bag_of_counters,
        question=lambda n: (f"A bag contains {n.counts['red']} red, {n.counts['blue']} blue and "
                            f"{n.counts['green']} green counters. One counter is taken at random. "
                            f"What is the probability that it is {n.colour}?"),
        correct=lambda n: (n.counts[n.colour], sum(n.counts.values())),
        kind=fraction(),
        rules=rules({
            "Writes a probability as favourable outcomes over unfavourable outcomes":
                lambda n: (n.counts[n.colour], sum(n.counts.values()) - n.counts[n.colour]),
            "Uses the number of colours as the denominator of a probability":
                lambda n: (n.counts[n.colour], len(n.counts)),
            "Gives the probability of the event not happening":
                lambda n: (sum(n.counts.values()) - n.counts[n.colour], sum(n.counts.values())),
            "Writes a probability as one over the number of favourable outcomes":
                lambda n: (1, n.counts[n.colour]),
            "Writes a probability upside down":
                lambda n: (sum(n.counts.values()), n.counts[n.colour]),
        }),
    ),
]


def draw_times(r: random.Random) -> SimpleNamespace:
    h1 = r.randint(8, 14)
    m1 = r.choice(range(25, 60, 5))
    return ns(h1=h1, m1=m1, h2=h1 + r.randint(1, 4), m2=r.choice(range(0, m1, 5)))


def _elapsed(n: SimpleNamespace) -> tuple[int, int]:
    return divmod((n.h2 * 60 + n.m2) - (n.h1 * 60 + n.m1), 60)


METRIC = (("m", "cm", 100, "centimetres"), ("km", "m", 1000, "metres"), ("cm", "mm", 10, "millimetres"),
          ("kg", "g", 1000, "grams"), ("l", "ml", 1000, "millilitres"))

def draw_metric_conversion(r: random.Random) -> SimpleNamespace:
    big, small, factor, name = r.choice(METRIC)
    return ns(x=Fraction(r.randint(11, 999), 10 ** r.randint(1, 2)), big=big, small=small, f=factor, name=name)


FAMILIES_MEASURES = [
    Family(
        subject="Time",
        construct="Calculate time intervals that cross the hour",
        draw=draw_times,
        question=lambda n: (f"A film starts at {n.h1}:{n.m1:02d} and finishes at {n.h2}:{n.m2:02d}. "
                            "How long is the film?"),
        correct=_elapsed,
        kind=DURATION,
        rules=rules({
            "Subtracts times as if there were 100 minutes in an hour":
                lambda n: divmod((n.h2 * 100 + n.m2) - (n.h1 * 100 + n.m1), 100),
            "Only counts the change in the hours when finding a time interval":
                lambda n: (n.h2 - n.h1, 0),
            "Subtracts the hours and the minutes separately, taking the smaller number of minutes from the larger":
                lambda n: (n.h2 - n.h1, n.m1 - n.m2),
            "Counts on to the next hour but forgets the minutes before it":
                lambda n: (n.h2 - n.h1 - 1, n.m2),
        }),
    ),
    Family(
        subject="Time",
        construct="Convert a decimal number of hours to minutes",
        draw=lambda r: ns(w=r.randint(1, 9), f=r.choice((Fraction(1, 10), Fraction(1, 5), Fraction(1, 4),
                                                        Fraction(2, 5), Fraction(1, 2), Fraction(3, 4)))),
        question=lambda n: f"How many minutes are there in {latex(dec(n.w + n.f))} hours?",
        correct=lambda n: (n.w + n.f) * 60,
        kind=POSITIVE,
        rules=rules({
            "Thinks there are 100 minutes in an hour":
                lambda n: (n.w + n.f) * 100,
            "Treats the digits after the decimal point as the number of minutes":
                lambda n: n.w * 60 + n.f * 100,
            "Only converts the whole number of hours to minutes":
                lambda n: n.w * 60,
        }),
    ),
    Family(
        subject="Length, Weight and Capacity Conversions",
        construct="Convert between metric units by multiplying",
        draw=draw_metric_conversion,
        question=lambda n: f"How many {n.name} are there in {latex(dec(n.x) + unit(n.big))} ?",
        correct=lambda n: n.x * n.f if n.x.denominator != 1 else None,
        kind=POSITIVE,
        rules=rules({
            "Uses a conversion factor ten times too small":
                lambda n: n.x * Fraction(n.f, 10),
            "Uses a conversion factor ten times too large":
                lambda n: n.x * n.f * 10,
            "Divides instead of multiplying when converting to a smaller unit":
                lambda n: n.x / n.f,
            "Writes zeros on the end of a decimal instead of multiplying when converting units":
                lambda n: dec(n.x) + "0" * (len(str(n.f)) - 1),
            "Thinks every metric conversion uses a factor of 100":
                lambda n: n.x * 100,
        }),
    ),
    Family(
        subject="Area Units",
        construct="Convert square metres to square centimetres",
        draw=lambda r: ns(x=Fraction(r.randint(2, 99), r.choice((1, 10)))),
        question=lambda n: f"How many {latex(SQ_CM)} are there in {latex(dec(n.x) + unit('m') + '^{2}')} ?",
        correct=lambda n: n.x * 10000,
        kind=POSITIVE,
        rules=rules({
            "Uses the length conversion factor when converting area units":
                lambda n: n.x * 100,
            "Doubles the length conversion factor when converting area units":
                lambda n: n.x * 200,
            "Divides instead of multiplying when converting area units":
                lambda n: n.x / 10000,
            "Uses 1000 as the conversion factor between square metres and square centimetres":
                lambda n: n.x * 1000,
        }),
    ),
]


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
        rules=rules({
            "Subtracts the smaller digit from the larger in each column":
                lambda n: from_digits(abs(x - y) for x, y in zip(n.ta, n.tb)),
            "Exchanges ten from the next column but forgets to reduce that column":
                lambda n: from_digits((x - y) % 10 for x, y in zip(n.ta, n.tb)),
            "Writes zero in a column when the top digit is smaller than the bottom digit":
                lambda n: from_digits(max(x - y, 0) for x, y in zip(n.ta, n.tb)),
        }),
    ),
    Family(
        subject="Written Addition",
        construct="Add integers using a written column method",
        draw=draw_column_addition,
        question=lambda n: f"Use column addition to work out {latex(f'{n.a}+{n.b}')}",
        correct=lambda n: n.a + n.b,
        kind=POSITIVE,
        rules=rules({
            "Forgets to carry when adding in columns":
                lambda n: from_digits((x + y) % 10 for x, y in zip(n.ta, n.tb)),
            "Writes the whole column total in the answer instead of carrying":
                lambda n: from_digits(x + y for x, y in zip(n.ta, n.tb)),
            "Carries the units digit and writes the tens digit of a column total":
                lambda n: carry_the_units(n.ta, n.tb),
        }),
    ),
    Family(
        subject="Linear Sequences (nth term)",
        construct="Find the nth term rule for an ascending linear sequence",
        draw=lambda r: ns(a=r.randint(1, 15), d=r.randint(2, 9)),
        question=lambda n: ("What is the nth term rule of this sequence? "
                            + latex(",".join(str(n.a + k * n.d) for k in range(4)) + ", \\ldots")),
        correct=lambda n: lin(n.d, n.a - n.d, "n"),
        kind=EXPRESSION,
        rules=rules({
            "Uses the first term as the coefficient of n and the difference as the constant":
                lambda n: lin(n.a, n.d, "n"),
            "Uses the first term as the constant in the nth term rule":
                lambda n: lin(n.d, n.a, "n"),
            "Writes the term-to-term rule as n plus the difference":
                lambda n: lin(1, n.d, "n"),
            "Adds the difference to the first term instead of subtracting it to find the constant":
                lambda n: lin(n.d, n.a + n.d, "n"),
            "Thinks the nth term is n plus the first term":
                lambda n: lin(1, n.a, "n"),
        }),
    ),
    Family(
        subject="Linear Sequences (nth term)",
        construct="Generate a term of a sequence from its nth term rule",
        draw=lambda r: ns(c=r.randint(2, 9), k=r.choice([k for k in range(-9, 10) if k]), t=r.randint(5, 20)),
        question=lambda n: (f"What is the {ordinal(n.t)} term of the sequence with nth term "
                            f"{latex(expr(lin(n.c, n.k, 'n')))} ?"),
        correct=lambda n: n.c * n.t + n.k,
        kind=NUMBER,
        rules=rules({
            "Writes the coefficient and the term number side by side instead of multiplying":
                lambda n: from_digits([n.c, n.t]) + n.k,
            "Adds the coefficient and the term number instead of multiplying":
                lambda n: n.c + n.t + n.k,
            "Ignores the constant in the nth term rule":
                lambda n: n.c * n.t,
            "Uses the wrong sign for the constant in the nth term rule":
                lambda n: n.c * n.t - n.k,
        }),
    ),
    Family(
        subject="Factors and Highest Common Factor",
        construct="Find the highest common factor of two numbers",
        draw=lambda r: draw_shared_factor(r, (4, 6, 8, 9, 10, 12, 14, 15)),
        question=lambda n: f"What is the highest common factor of {latex(n.a)} and {latex(n.b)} ?",
        correct=lambda n: n.g,
        kind=POSITIVE,
        rules=rules({
            "Gives the lowest common multiple instead of the highest common factor":
                lambda n: math.lcm(n.a, n.b),
            "Gives a common factor that is not the highest":
                lambda n: n.g // smallest_prime_factor(n.g),
            "Multiplies the two numbers to find the highest common factor":
                lambda n: n.a * n.b,
            "Thinks the highest common factor is the difference between the two numbers":
                lambda n: abs(n.a - n.b),
            "Gives the smaller number as the highest common factor":
                lambda n: min(n.a, n.b),
        }),
    ),
    Family(
        subject="Multiples and Lowest Common Multiple",
        construct="Find the lowest common multiple of two numbers",
        draw=lambda r: draw_shared_factor(r, (2, 3, 4, 5, 6)),
        question=lambda n: f"What is the lowest common multiple of {latex(n.a)} and {latex(n.b)} ?",
        correct=lambda n: math.lcm(n.a, n.b),
        kind=POSITIVE,
        rules=rules({
            "Gives the highest common factor instead of the lowest common multiple":
                lambda n: n.g,
            "Multiplies the two numbers even though they share a factor":
                lambda n: n.a * n.b,
            "Adds the two numbers to find the lowest common multiple":
                lambda n: n.a + n.b,
            "Gives the larger number as the lowest common multiple":
                lambda n: max(n.a, n.b),
        }),
    ),
    Family(
        subject="Gradient Between Two Co-ordinates",
        construct="Calculate the gradient of a line through two points",
        draw=draw_two_points,
        question=lambda n: (f"What is the gradient of the line through {latex(f'({n.x1},{n.y1})')} and "
                            f"{latex(f'({n.x2},{n.y2})')} ?"),
        correct=lambda n: Fraction(n.y2 - n.y1, n.x2 - n.x1),
        kind=RATIONAL,
        rules=rules({
            "Divides the change in x by the change in y":
                lambda n: Fraction(n.x2 - n.x1, n.y2 - n.y1),
            "Subtracts the coordinates in a different order for x and for y":
                lambda n: Fraction(n.y2 - n.y1, n.x1 - n.x2),
            "Adds the coordinates instead of subtracting them to find a gradient":
                lambda n: Fraction(n.y1 + n.y2, n.x1 + n.x2),
            "Gives the change in y as the gradient":
                lambda n: n.y2 - n.y1,
            "Divides the y-coordinate by the x-coordinate of one point to find the gradient":
                lambda n: Fraction(n.y2, n.x2),
        }),
    ),
    Family(
        subject="Substitution into Formula",
        construct="Substitute a positive integer into an expression with a squared term",
        draw=lambda r: ns(c=r.randint(2, 6), x=r.randint(2, 9)),
        question=lambda n: f"What is the value of {latex(f'{n.c} {X2}')} when {latex(f'x={n.x}')} ?",
        correct=lambda n: n.c * n.x**2,
        kind=POSITIVE,
        rules=rules({
            "Multiplies by the coefficient before squaring":
                lambda n: (n.c * n.x) ** 2,
            "Thinks squaring means multiplying by 2 when substituting":
                lambda n: n.c * 2 * n.x,
            "Adds the coefficient instead of multiplying by it":
                lambda n: n.c + n.x**2,
            "Ignores the power when substituting":
                lambda n: n.c * n.x,
        }),
    ),
]

FAMILIES: tuple[Family, ...] = tuple(
    FAMILIES_FRACTIONS + FAMILIES_NEGATIVES + FAMILIES_BIDMAS + FAMILIES_PLACE_VALUE + FAMILIES_PERCENTAGES
    + FAMILIES_ANGLES + FAMILIES_AREA + FAMILIES_ALGEBRA + FAMILIES_INDICES + FAMILIES_RATIO
    + FAMILIES_STATISTICS + FAMILIES_MEASURES + FAMILIES_NUMBER
)
RULES: dict[str, Rule] = {rule.misconception: rule for fam in FAMILIES for rule in fam.rules}
FAMILY_OF: dict[str, Family] = {rule.misconception: fam for fam in FAMILIES for rule in fam.rules}

# Plausible misconceptions no question uses: the real mapping (2,587 ids) is mostly this.
UNUSED_MISCONCEPTIONS = (
    "Believes the square root of a number is half the number",
    "Confuses the radius and the diameter of a circle",
    "Thinks a trapezium is a parallelogram",
    "Believes the y-intercept is where a line crosses the x-axis",
    "Confuses the x and y coordinates when plotting a point",
    "Thinks the gradient of a horizontal line is undefined",
    "Believes parallel lines have gradients that multiply to give -1",
    "Confuses a reflection in the line y = x with a reflection in the y-axis",
    "Rotates a shape clockwise when asked to rotate it anticlockwise",
    "Thinks an enlargement by scale factor one half makes a shape bigger",
    "Thinks the volume of a cuboid is the sum of its three dimensions",
    "Confuses the names of prisms and pyramids",
    "Thinks corresponding angles on parallel lines add up to 180 degrees",
    "Confuses alternate angles with co-interior angles",
    "Believes the bars of a bar chart must touch",
    "Reads the frequency instead of the value from a frequency table",
    "Thinks the probability of two events both happening is found by adding their probabilities",
    "Believes a probability can be greater than 1",
    "Thinks 1 is a prime number",
    "Believes all odd numbers are prime",
    "Thinks the square of a negative number is negative",
    "Confuses factors and multiples",
    "Reads inequality signs the wrong way round",
    "Thinks x < 3 includes the number 3",
    "Believes the solutions of a quadratic equation are always positive",
    "Factorises a quadratic with the wrong signs in the brackets",
    "Believes the line y = 3 is vertical",
    "Confuses the equation of the x-axis with the equation of the y-axis",
    "Thinks the angle of a pie chart sector equals the frequency",
    "Believes the scale on a graph axis must start at zero",
    "Confuses cube numbers with multiples of three",
    "Thinks speed is distance multiplied by time",
    "Reads a scale by counting the marks instead of using the value of each interval",
    "Thinks a cube has six vertices",
    "Believes the hypotenuse is always the vertical side of a right-angled triangle",
    "Adds the lengths of the two shorter sides to find the hypotenuse",
)

# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Option:
    text: str
    key: Hashable
    misconception: str | None  # None: the correct answer, or a slip nobody labelled


@dataclass(frozen=True)
class Question:
    family: Family
    numbers: SimpleNamespace  # what family.draw produced: every option is a function of these
    text: str
    answers: dict[str, Option]  # letter -> option
    correct: str  # letter


def _evaluate(kind: Kind, fn: Callable[[SimpleNamespace], Any], n: SimpleNamespace,
              misconception: str | None = None) -> tuple[Any, Option] | None:
    """Apply ``fn`` and write the result; None when the result is invalid for this question."""
    try:
        value = fn(n)
        if value is None:
            return None
        text = kind.show(value)
        return value, Option(text, kind.key_of(value, text), misconception)
    except (ArithmeticError, ValueError):
        return None


def _nudge(value: Any, r: random.Random) -> Any:
    """A careless slip: the same answer knocked slightly off (one number in it changed)."""
    if isinstance(value, (bool, str)):
        return None
    if isinstance(value, int):
        return value + r.choice((-3, -2, -1, 1, 2, 3))
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return Fraction(_nudge(value.numerator, r))
        try:
            places = len(dec(value).split(".")[1])
            return value + r.choice((-2, -1, 1, 2)) * Fraction(1, 10**places)
        except ValueError:  # not a decimal: change the numerator
            return Fraction(value.numerator + r.choice((-1, 1)), value.denominator)
    if isinstance(value, tuple):
        slots = [i for i, x in enumerate(value) if isinstance(x, (int, Fraction, tuple))]
        if not slots:
            return None
        i = r.choice(slots)
        return value[:i] + (_nudge(value[i], r),) + value[i + 1:]
    return None


def _slip(fam: Family, correct_value: Any, forbidden: set[Hashable], r: random.Random) -> Option | None:
    """An unlabelled distractor near the correct answer that no rule produced."""
    for _ in range(20):
        nudged = _nudge(correct_value, r)
        if nudged is None:
            return None
        out = _evaluate(fam.kind, lambda _n: nudged, SimpleNamespace())
        if out is not None and out[1].key not in forbidden and out[1].text not in forbidden:
            return out[1]
    return None


def make_question(fam: Family, allowed: list[Rule], must: Rule, usage: Counter, r: random.Random,
                  seen_texts: set[str], slip_rate: float, tries: int = MAX_TRIES) -> Question:
    """Draw numbers until ``must`` and two more allowed rules give three distinct distractors.

    The partners are the allowed rules used least so far (``usage``), which keeps every
    misconception's count close to the target.
    """
    for _ in range(tries):
        n = fam.draw(r)
        if n is None:
            continue
        text = fam.question(n)
        if text in seen_texts:  # a question appears once in the whole data set
            continue
        correct = _evaluate(fam.kind, fam.correct, n)
        if correct is None:
            continue
        correct_value, correct_opt = correct
        outcomes = {}
        for rule in allowed:
            out = _evaluate(fam.kind, rule.apply, n, rule.misconception)
            if out is not None and out[1].key != correct_opt.key and out[1].text != correct_opt.text:
                outcomes[rule.misconception] = out[1]
        if must.misconception not in outcomes:
            continue
        others = sorted((m for m in outcomes if m != must.misconception), key=lambda m: (usage[m], r.random()))
        chosen: list[Option] = []
        taken = {correct_opt.key, correct_opt.text}
        for m in [must.misconception, *others]:
            opt = outcomes[m]
            if opt.key not in taken and opt.text not in taken:
                chosen.append(opt)
                taken |= {opt.key, opt.text}
            if len(chosen) == 3:
                break
        if len(chosen) < 3:
            continue
        if r.random() < slip_rate:
            # Never replace `must` (chosen[0]); a slip must not look like any rule's output.
            forbidden = taken | {o.key for o in outcomes.values()} | {o.text for o in outcomes.values()}
            slip = _slip(fam, correct_value, forbidden, r)
            if slip is not None:
                chosen[-1] = slip
        r.shuffle(chosen)
        letter = r.choice(LETTERS)
        wrong = [x for x in LETTERS if x != letter]
        answers = {letter: correct_opt, **dict(zip(wrong, chosen))}
        seen_texts.add(text)
        return Question(fam, n, text, {x: answers[x] for x in LETTERS}, letter)
    raise RuntimeError(f"family {fam.construct!r} cannot host {must.misconception!r} after {tries} draws")


def _can_host_all(fam: Family, allowed: list[Rule]) -> bool:
    """Can ``fam`` still build a question around each allowed rule? (Some rules only ever
    differ from the correct answer together with a particular other rule.)"""
    probe = random.Random(0)  # own stream: probing must not shift the main one
    try:
        for must in allowed:
            make_question(fam, allowed, must, Counter(), probe, set(), 0.0, tries=200)
    except RuntimeError:
        return False
    return True


def _choose_test_only(r: random.Random) -> list[str]:
    """Hold out one rule in each of N_TEST_ONLY random families (of five or more rules),
    choosing among the rules whose removal leaves the family able to host the rest."""
    chosen: list[str] = []
    eligible = [fam for fam in FAMILIES if len(fam.rules) >= 5]
    for fam in r.sample(eligible, k=len(eligible)):
        for rule in r.sample(fam.rules, k=len(fam.rules)):
            if _can_host_all(fam, [x for x in fam.rules if x is not rule]):
                chosen.append(rule.misconception)
                break
        if len(chosen) == N_TEST_ONLY:
            return chosen
    raise RuntimeError("not enough families can spare a rule for the test-only misconceptions")


def _least_used(pool: list[Rule], usage: Counter, r: random.Random) -> Rule:
    low = min(usage[rule.misconception] for rule in pool)
    return r.choice([rule for rule in pool if usage[rule.misconception] == low])


@dataclass
class Sample:
    train: pd.DataFrame
    test: pd.DataFrame
    misconception_mapping: pd.DataFrame
    sample_submission: pd.DataFrame
    test_labels: pd.DataFrame  # test.csv plus Misconception*Id columns: not written, for checks
    test_only: list[str]  # misconception names that appear in test but never in train


def build_sample(seed: int = 0) -> Sample:
    """Generate everything in memory. Same seed, same frames."""
    r = random.Random(seed)
    test_only = _choose_test_only(r)
    held_out = set(test_only)

    names = list(RULES) + list(UNUSED_MISCONCEPTIONS)
    ids = r.sample(range(len(names)), len(names))  # shuffled so ids do not reveal the subject order
    mid = dict(zip(names, ids))

    subjects = list(dict.fromkeys(fam.subject for fam in FAMILIES))
    subject_id = dict(zip(subjects, r.sample(range(1, 400), len(subjects))))
    construct_id = dict(zip((fam.construct for fam in FAMILIES), r.sample(range(1, 4000), len(FAMILIES))))

    seen_texts: set[str] = set()

    # Train: repeatedly build a question around the least-used misconception until all have
    # TRAIN_USES appearances (and there are enough questions).
    train_rules = [rule for fam in FAMILIES for rule in fam.rules if rule.misconception not in held_out]
    usage: Counter = Counter()
    train: list[Question] = []
    while True:
        pool = [rule for rule in train_rules if usage[rule.misconception] < TRAIN_USES]
        if not pool and len(train) >= MIN_TRAIN_QUESTIONS:
            break
        must = _least_used(pool or train_rules, usage, r)
        fam = FAMILY_OF[must.misconception]
        allowed = [rule for rule in fam.rules if rule.misconception not in held_out]
        q = make_question(fam, allowed, must, usage, r, seen_texts, SLIP_RATE)
        usage.update(o.misconception for o in q.answers.values() if o.misconception)
        train.append(q)

    # Test: questions around each held-out misconception, then a spread of seen ones.
    test_usage: Counter = Counter()
    test: list[Question] = []
    musts = [RULES[m] for m in test_only for _ in range(TEST_ONLY_USES)]
    musts += [r.choice(train_rules) for _ in range(N_TEST_QUESTIONS - len(musts))]
    r.shuffle(musts)
    for must in musts:
        fam = FAMILY_OF[must.misconception]
        q = make_question(fam, list(fam.rules), must, test_usage, r, seen_texts, SLIP_RATE)
        test_usage.update(o.misconception for o in q.answers.values() if o.misconception)
        test.append(q)

    # Generation order follows the balancing loop; the files should not.
    r.shuffle(train)
    r.shuffle(test)

    def rows(questions: list[Question], first_id: int) -> pd.DataFrame:
        records = []
        for i, q in enumerate(questions):
            rec = {
                "QuestionId": first_id + i,
                "ConstructId": construct_id[q.family.construct],
                "ConstructName": q.family.construct,
                "SubjectId": subject_id[q.family.subject],
                "SubjectName": q.family.subject,
                "CorrectAnswer": q.correct,
                "QuestionText": q.text,
            }
            rec.update({f"Answer{x}Text": q.answers[x].text for x in LETTERS})
            rec.update({f"Misconception{x}Id": float(mid[q.answers[x].misconception])
                        if q.answers[x].misconception else float("nan") for x in LETTERS})
            records.append(rec)
        return pd.DataFrame.from_records(records, columns=TRAIN_COLUMNS)

    train_df = rows(train, 0)
    test_labels = rows(test, len(train))
    submission = pd.DataFrame({
        "QuestionId_Answer": [f"{qid}_{x}" for qid, correct in zip(test_labels["QuestionId"],
                                                                     test_labels["CorrectAnswer"])
                              for x in LETTERS if x != correct],
    })
    submission["MisconceptionId"] = "1 2 3"  # Kaggle's placeholder
    mapping = pd.DataFrame({"MisconceptionId": sorted(ids), "MisconceptionName": sorted(names, key=mid.get)})
    return Sample(train_df, test_labels[QUESTION_COLUMNS].copy(), mapping, submission, test_labels, test_only)


def _write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write next to the target, then rename: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            df.to_csv(fh, index=False, lineterminator="\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_sample(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write train.csv, test.csv, misconception_mapping.csv, sample_submission.csv into out_dir
    (atomic: write to a temp file in the same dir, then os.replace). Return {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = build_sample(seed)
    written = {}
    for name, filename in FILES.items():
        path = out / filename
        _write_csv_atomic(getattr(sample, name), path)
        written[name] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/sample", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in generate_sample(args.out, seed=args.seed).values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
