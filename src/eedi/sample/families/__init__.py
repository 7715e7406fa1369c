from __future__ import annotations

from eedi.sample.catalogue import Family, Rule
from eedi.sample.families.algebra import FAMILIES_ALGEBRA
from eedi.sample.families.angles import FAMILIES_ANGLES
from eedi.sample.families.area import FAMILIES_AREA
from eedi.sample.families.bidmas import FAMILIES_BIDMAS
from eedi.sample.families.fractions import FAMILIES_FRACTIONS
from eedi.sample.families.indices import FAMILIES_INDICES
from eedi.sample.families.measures import FAMILIES_MEASURES
from eedi.sample.families.negatives import FAMILIES_NEGATIVES
from eedi.sample.families.number import FAMILIES_NUMBER
from eedi.sample.families.percentages import FAMILIES_PERCENTAGES
from eedi.sample.families.place_value import FAMILIES_PLACE_VALUE
from eedi.sample.families.ratio import FAMILIES_RATIO
from eedi.sample.families.statistics import FAMILIES_STATISTICS

FAMILIES: tuple[Family, ...] = tuple(
    FAMILIES_FRACTIONS
    + FAMILIES_NEGATIVES
    + FAMILIES_BIDMAS
    + FAMILIES_PLACE_VALUE
    + FAMILIES_PERCENTAGES
    + FAMILIES_ANGLES
    + FAMILIES_AREA
    + FAMILIES_ALGEBRA
    + FAMILIES_INDICES
    + FAMILIES_RATIO
    + FAMILIES_STATISTICS
    + FAMILIES_MEASURES
    + FAMILIES_NUMBER
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
