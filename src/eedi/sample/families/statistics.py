from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, draw_data_list, draw_mean_list, draw_median_list, ns, rules
from eedi.sample.kinds import NUMBER, POSITIVE, fraction
from eedi.sample.text import dec, digits_of, from_digits, latex, median, mode, number_list

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
        rules=rules(
            {
                "Finds the median instead of the mean": lambda n: median(n.v),
                "Divides the total by one less than the number of values": lambda n: Fraction(sum(n.v), n.n - 1),
                "Adds up the values but does not divide by how many there are": lambda n: sum(n.v),
                "Finds the mode instead of the mean": lambda n: mode(n.v),
                "Finds the range instead of the mean": lambda n: spread(n.v),
                "Finds the midpoint of the largest and smallest values instead of the mean": lambda n: Fraction(
                    max(n.v) + min(n.v), 2
                ),
            }
        ),
    ),
    Family(
        subject=AVERAGES,
        construct="Find the median from an unordered list of data",
        draw=draw_median_list,
        question=lambda n: f"What is the median of these numbers? {number_list(n.v)}",
        correct=lambda n: median(n.v),
        kind=POSITIVE,
        rules=rules(
            {
                "Finds the middle value of the list without putting it in order first": lambda n: n.v[n.n // 2],
                "Finds the mean instead of the median": lambda n: Fraction(sum(n.v), n.n),
                "Gives the position of the median instead of its value": lambda n: Fraction(n.n + 1, 2),
                "Finds the mode instead of the median": lambda n: mode(n.v),
                "Finds the range instead of the median": lambda n: spread(n.v),
            }
        ),
    ),
    Family(
        subject=AVERAGES,
        construct="Find the mode from a list of data",
        draw=lambda r: ns(v=draw_data_list(r, r.randint(6, 8), repeats=r.choice((2, 3)))),
        question=lambda n: f"What is the mode of these numbers? {number_list(n.v)}",
        correct=lambda n: mode(n.v),
        kind=POSITIVE,
        rules=rules(
            {
                "Gives the frequency of the mode instead of its value": lambda n: Counter(n.v)[mode(n.v)],
                "Finds the median instead of the mode": lambda n: median(n.v),
                "Gives the largest value instead of the mode": lambda n: max(n.v),
                "Finds the range instead of the mode": lambda n: spread(n.v),
            }
        ),
    ),
    Family(
        subject="Range from a List of Data",
        construct="Calculate the range from a list of data",
        draw=lambda r: ns(v=r.sample(range(1, 40), r.randint(5, 7))),
        question=lambda n: f"What is the range of these numbers? {number_list(n.v)}",
        correct=lambda n: spread(n.v),
        kind=NUMBER,
        rules=rules(
            {
                "Gives the largest value instead of the range": lambda n: max(n.v),
                "Subtracts the first value in the list from the last value": lambda n: n.v[-1] - n.v[0],
                "Adds the largest and smallest values to find the range": lambda n: max(n.v) + min(n.v),
                "Finds the median instead of the range": lambda n: median(n.v),
            }
        ),
    ),
    Family(
        subject="Probability of Single Events",
        construct="Find the probability of an event not happening",
        draw=lambda r: ns(p=Fraction(10 * r.randint(1, 9) + r.randint(1, 9), 100)),
        question=lambda n: (
            f"The probability that it rains tomorrow is {latex(dec(n.p))}. "
            "What is the probability that it does not rain tomorrow?"
        ),
        correct=lambda n: 1 - n.p,
        kind=POSITIVE,
        rules=rules(
            {
                "Subtracts the probability from 100 instead of 1": lambda n: 100 - n.p,
                # 1 - 0.35 -> 0.75: both decimal digits are non-zero (see draw), so 10 - d is one digit.
                "Subtracts each decimal digit from 10 when subtracting from 1": lambda n: Fraction(
                    from_digits(10 - d for d in digits_of(int(n.p * 100))), 100
                ),
                "Gives the probability of the event instead of the probability of it not happening": lambda n: n.p,
                "Thinks there are only two outcomes so the probability must be 0.5": lambda n: Fraction(1, 2),
            }
        ),
    ),
    Family(
        subject="Probability of Single Events",
        construct="Calculate the probability of an outcome from counts",
        draw=draw_bag_of_counters,
        question=lambda n: (
            f"A bag contains {n.counts['red']} red, {n.counts['blue']} blue and "
            f"{n.counts['green']} green counters. One counter is taken at random. "
            f"What is the probability that it is {n.colour}?"
        ),
        correct=lambda n: (n.counts[n.colour], sum(n.counts.values())),
        kind=fraction(),
        rules=rules(
            {
                "Writes a probability as favourable outcomes over unfavourable outcomes": lambda n: (
                    n.counts[n.colour],
                    sum(n.counts.values()) - n.counts[n.colour],
                ),
                "Uses the number of colours as the denominator of a probability": lambda n: (
                    n.counts[n.colour],
                    len(n.counts),
                ),
                "Gives the probability of the event not happening": lambda n: (
                    sum(n.counts.values()) - n.counts[n.colour],
                    sum(n.counts.values()),
                ),
                "Writes a probability as one over the number of favourable outcomes": lambda n: (1, n.counts[n.colour]),
                "Writes a probability upside down": lambda n: (sum(n.counts.values()), n.counts[n.colour]),
            }
        ),
    ),
]
