from __future__ import annotations

from eedi.sample.catalogue import Family, ns, rules
from eedi.sample.kinds import NUMBER
from eedi.sample.text import latex

BIDMAS = "BIDMAS"

FAMILIES_BIDMAS = [
    Family(
        subject=BIDMAS,
        construct="Use the order of operations with brackets and multiplication",
        draw=lambda r: ns(a=r.randint(20, 60), b=r.randint(2, 5), c=r.randint(1, 6), d=r.randint(1, 6)),
        question=lambda n: latex(f"{n.a}-{n.b} \\times({n.c}+{n.d})="),
        correct=lambda n: n.a - n.b * (n.c + n.d),
        kind=NUMBER,
        rules=rules(
            {
                "Carries out operations from left to right regardless of priority order": lambda n: (
                    (n.a - n.b) * n.c + n.d
                ),
                "Does the subtraction before the multiplication": lambda n: (n.a - n.b) * (n.c + n.d),
                "Ignores the brackets and multiplies first": lambda n: n.a - n.b * n.c + n.d,
                "Multiplies only the first term inside the brackets": lambda n: n.a - (n.b * n.c + n.d),
            }
        ),
    ),
    Family(
        subject=BIDMAS,
        construct="Use the order of operations with indices, multiplication and addition",
        draw=lambda r: ns(a=r.randint(2, 9), b=r.randint(2, 6), c=r.randint(2, 5)),
        question=lambda n: latex(f"{n.a}+{n.b}^{{2}} \\times {n.c}="),
        correct=lambda n: n.a + n.b**2 * n.c,
        kind=NUMBER,
        rules=rules(
            {
                "Adds before multiplying, working from left to right": lambda n: (n.a + n.b**2) * n.c,
                "Multiplies before applying the power": lambda n: n.a + (n.b * n.c) ** 2,
                "Thinks squaring a number means multiplying it by two": lambda n: n.a + 2 * n.b * n.c,
                "Adds before squaring": lambda n: (n.a + n.b) ** 2 * n.c,
            }
        ),
    ),
]
