from __future__ import annotations

import random
from fractions import Fraction
from types import SimpleNamespace

from eedi.sample.catalogue import Family, draw_two_angles, ns, rules
from eedi.sample.kinds import ANGLE
from eedi.sample.text import degrees

POLYGON_NAMES = {
    5: "a pentagon",
    6: "a hexagon",
    7: "a heptagon",
    8: "an octagon",
    9: "a nonagon",
    10: "a decagon",
    12: "a dodecagon",
}


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
        question=lambda n: (
            f"A triangle has angles of {degrees(n.x)} and {degrees(n.y)}. What is the size of the third angle?"
        ),
        correct=lambda n: 180 - n.x - n.y,
        kind=ANGLE,
        rules=rules(
            {
                "Thinks the angles in a triangle add up to 360 degrees": lambda n: 360 - n.x - n.y,
                "Thinks the angles in a triangle add up to 90 degrees": lambda n: 90 - n.x - n.y,
                "Thinks the missing angle in a triangle is the sum of the other two": lambda n: n.x + n.y,
                "Subtracts only one of the known angles from 180 degrees in a triangle": lambda n: 180 - n.x,
                "Thinks the missing angle in a triangle is the difference of the other two": lambda n: abs(n.x - n.y),
            }
        ),
    ),
    Family(
        subject="Basic Angle Facts (straight line, opposite, around a point, etc)",
        construct="Find a missing angle on a straight line",
        draw=draw_two_angles,
        question=lambda n: (
            f"Three angles lie on a straight line. Two of them are {degrees(n.x)} "
            f"and {degrees(n.y)}. What is the size of the third angle?"
        ),
        correct=lambda n: 180 - n.x - n.y,
        kind=ANGLE,
        rules=rules(
            {
                "Thinks angles on a straight line add up to 360 degrees": lambda n: 360 - n.x - n.y,
                "Thinks angles on a straight line add up to 90 degrees": lambda n: 90 - n.x - n.y,
                "Forgets to subtract one of the known angles on a straight line": lambda n: 180 - n.x,
                "Assumes the missing angle on a straight line equals the largest angle given": lambda n: max(n.x, n.y),
            }
        ),
    ),
    Family(
        subject="Basic Angle Facts (straight line, opposite, around a point, etc)",
        construct="Find a missing angle around a point",
        draw=draw_three_angles,
        question=lambda n: (
            f"Four angles meet at a point. Three of them are {degrees(n.x)}, "
            f"{degrees(n.y)} and {degrees(n.z)}. "
            "What is the size of the fourth angle?"
        ),
        correct=lambda n: 360 - n.x - n.y - n.z,
        kind=ANGLE,
        rules=rules(
            {
                "Thinks angles around a point add up to 180 degrees": lambda n: 180 - n.x - n.y - n.z,
                "Forgets to subtract one of the known angles around a point": lambda n: 360 - n.x - n.y,
                "Subtracts only the largest known angle from 360 degrees": lambda n: 360 - max(n.x, n.y, n.z),
                "Gives the total of the known angles instead of the missing angle": lambda n: n.x + n.y + n.z,
            }
        ),
    ),
    Family(
        subject="Angles in Polygons",
        construct="Calculate the sum of the interior angles of a polygon",
        draw=lambda r: ns(n=r.randint(5, 36), wording=r.randint(0, 1)),
        question=lambda n: (
            f"What is the sum of the interior angles of {polygon_name(n.n)}?"
            if n.wording
            else f"A polygon has {n.n} sides. What do its interior angles add up to?"
        ),
        correct=lambda n: (n.n - 2) * 180,
        kind=ANGLE,
        rules=rules(
            {
                "Thinks the interior angles of a polygon add up to 180 degrees times the number of sides": lambda n: (
                    n.n * 180
                ),
                "Thinks the interior angles of any polygon add up to 360 degrees": lambda n: 360,
                "Uses one less than the number of sides, times 180 degrees, for the interior angle sum": lambda n: (
                    (n.n - 1) * 180
                ),
                "Multiplies two less than the number of sides by 360 degrees instead of 180": lambda n: (n.n - 2) * 360,
                "Confuses the sum of the interior angles with one exterior angle": lambda n: (
                    Fraction(360, n.n) if 360 % n.n == 0 else None
                ),
            }
        ),
    ),
]
