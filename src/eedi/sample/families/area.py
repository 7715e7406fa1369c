from __future__ import annotations

from fractions import Fraction

from eedi.sample.catalogue import Family, draw_base_height_slant, draw_shape_sides, ns, rules
from eedi.sample.kinds import PI_AREA, number
from eedi.sample.text import CM, CM2, PI, latex

AREA = "Area of Simple Shapes"


def _lengths(**sides: int) -> dict[str, str]:
    return {k: latex(f"{v}{CM}") for k, v in sides.items()}


FAMILIES_AREA = [
    Family(
        subject=AREA,
        construct="Calculate the area of a rectangle",
        draw=draw_shape_sides,
        question=lambda n: "A rectangle has length {l} and width {w}. What is its area?".format(
            **_lengths(l=n.l, w=n.w)
        ),
        correct=lambda n: n.l * n.w,
        kind=number(suffix=CM2, positive=True),
        rules=rules(
            {
                "Calculates the perimeter when asked for the area": lambda n: 2 * (n.l + n.w),
                "Adds the length and width to find the area of a rectangle": lambda n: n.l + n.w,
                "Halves the product of the sides as if the rectangle were a triangle": lambda n: Fraction(n.l * n.w, 2),
                "Thinks the area of a rectangle is its length squared": lambda n: n.l * n.l,
            }
        ),
    ),
    Family(
        subject="Perimeter",
        construct="Calculate the perimeter of a rectangle",
        draw=draw_shape_sides,
        question=lambda n: "A rectangle has length {l} and width {w}. What is its perimeter?".format(
            **_lengths(l=n.l, w=n.w)
        ),
        correct=lambda n: 2 * (n.l + n.w),
        kind=number(suffix=CM, positive=True),
        rules=rules(
            {
                "Calculates the area when asked for the perimeter": lambda n: n.l * n.w,
                "Adds only the two labelled sides to find the perimeter": lambda n: n.l + n.w,
                "Counts one pair of sides twice but the other side only once": lambda n: 2 * n.l + n.w,
                "Thinks the perimeter of a rectangle is four times its longest side": lambda n: 4 * max(n.l, n.w),
            }
        ),
    ),
    Family(
        subject=AREA,
        construct="Calculate the area of a triangle using base and perpendicular height",
        draw=draw_base_height_slant,
        question=lambda n: (
            "A triangle has a base of {b}, a perpendicular height of {h} and a sloping side of {s}. What is its area?"
        ).format(**_lengths(b=n.b, h=n.h, s=n.s)),
        correct=lambda n: Fraction(n.b * n.h, 2),
        kind=number(suffix=CM2, positive=True),
        rules=rules(
            {
                "Does not divide by 2 when finding the area of a triangle": lambda n: n.b * n.h,
                "Adds the base and the height and then halves": lambda n: Fraction(n.b + n.h, 2),
                "Uses the sloping side instead of the perpendicular height for the area of a triangle": lambda n: (
                    Fraction(n.b * n.s, 2)
                ),
                "Halves both the base and the height of a triangle": lambda n: Fraction(n.b * n.h, 4),
                "Divides by 3 instead of 2 for the area of a triangle": lambda n: Fraction(n.b * n.h, 3),
            }
        ),
    ),
    Family(
        subject="Area of a Circle",
        construct="Calculate the area of a circle in terms of pi from its radius",
        draw=lambda r: ns(r=r.randint(2, 25), wording=r.randint(0, 1)),
        question=lambda n: (
            f"A circle has a radius of {latex(f'{n.r}{CM}')}. What is its area? Give your answer in terms of {PI}."
            if n.wording
            else f"Work out the area of a circle of radius {latex(f'{n.r}{CM}')}. Leave your answer in terms of {PI}."
        ),
        correct=lambda n: (n.r**2, 1),
        kind=PI_AREA,
        rules=rules(
            {
                "Uses the circumference formula when finding the area of a circle": lambda n: (2 * n.r, 1),
                "Uses the diameter instead of the radius in the area formula": lambda n: (4 * n.r**2, 1),
                "Squares pi as well as the radius": lambda n: (n.r**2, 2),
                "Does not square the radius when finding the area of a circle": lambda n: (n.r, 1),
                "Halves the radius before squaring it": lambda n: (Fraction(n.r**2, 4), 1),
            }
        ),
    ),
    Family(
        subject=AREA,
        construct="Calculate the area of a parallelogram",
        draw=draw_base_height_slant,
        question=lambda n: (
            "A parallelogram has a base of {b}, a perpendicular height of {h} and a sloping "
            "side of {s}. What is its area?"
        ).format(**_lengths(b=n.b, h=n.h, s=n.s)),
        correct=lambda n: n.b * n.h,
        kind=number(suffix=CM2, positive=True),
        rules=rules(
            {
                "Uses the sloping side instead of the perpendicular height for the area of a parallelogram": lambda n: (
                    n.b * n.s
                ),
                "Halves the product of the base and height for a parallelogram": lambda n: Fraction(n.b * n.h, 2),
                "Adds the base and the perpendicular height of a parallelogram": lambda n: n.b + n.h,
                "Calculates the perimeter of a parallelogram instead of its area": lambda n: 2 * (n.b + n.s),
            }
        ),
    ),
]
