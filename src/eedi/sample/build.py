"""Building the procedural sample: questions from the families, split into train and test.

Procedural, seed-reproducible sample data in the Kaggle "Eedi - Mining Misconceptions in
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

    eedi make-sample --out data/sample --seed 0
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

import pandas as pd

from eedi.data.schema import LETTERS, QUESTION_COLUMNS, TRAIN_COLUMNS
from eedi.sample.catalogue import Family, Rule
from eedi.sample.families import FAMILIES, FAMILY_OF, RULES, UNUSED_MISCONCEPTIONS
from eedi.sample.kinds import Kind
from eedi.sample.text import dec

# --------------------------------------------------------------------------- knobs

TRAIN_USES = 7  # every train rule-misconception appears at least this often in train.csv
MIN_TRAIN_QUESTIONS = 400
N_TEST_ONLY = 15  # rule-misconceptions held out of train, used only in test.csv
TEST_ONLY_USES = 2  # test questions built around each of them
N_TEST_QUESTIONS = 60
SLIP_RATE = 0.24  # chance a question swaps one distractor for a slip: 0.24 / 3 = ~8% of distractors
MAX_TRIES = 500  # number redraws before a family is declared unable to host a rule
FILES = {
    "train": "train.csv",
    "test": "test.csv",
    "misconception_mapping": "misconception_mapping.csv",
    "sample_submission": "sample_submission.csv",
}

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


def _evaluate(
    kind: Kind, fn: Callable[[SimpleNamespace], Any], n: SimpleNamespace, misconception: str | None = None
) -> tuple[Any, Option] | None:
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
        return value[:i] + (_nudge(value[i], r),) + value[i + 1 :]
    return None


def _slip(fam: Family, correct_value: Any, forbidden: set[Hashable], r: random.Random) -> Option | None:
    """An unlabelled distractor near the correct answer that no rule produced."""
    for _ in range(20):
        nudged = _nudge(correct_value, r)
        if nudged is None:
            return None
        out = _evaluate(fam.kind, lambda _n, value=nudged: value, SimpleNamespace())
        if out is not None and out[1].key not in forbidden and out[1].text not in forbidden:
            return out[1]
    return None


def make_question(
    fam: Family,
    allowed: list[Rule],
    must: Rule,
    usage: Counter,
    r: random.Random,
    seen_texts: set[str],
    slip_rate: float,
    tries: int = MAX_TRIES,
) -> Question:
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
            rec.update(
                {
                    f"Misconception{x}Id": float(mid[q.answers[x].misconception])
                    if q.answers[x].misconception
                    else float("nan")
                    for x in LETTERS
                }
            )
            records.append(rec)
        return pd.DataFrame.from_records(records, columns=TRAIN_COLUMNS)

    train_df = rows(train, 0)
    test_labels = rows(test, len(train))
    submission = pd.DataFrame(
        {
            "QuestionId_Answer": [
                f"{qid}_{x}"
                for qid, correct in zip(test_labels["QuestionId"], test_labels["CorrectAnswer"])
                for x in LETTERS
                if x != correct
            ],
        }
    )
    submission["MisconceptionId"] = "1 2 3"  # Kaggle's placeholder
    mapping = pd.DataFrame({"MisconceptionId": sorted(ids), "MisconceptionName": sorted(names, key=mid.get)})
    return Sample(train_df, test_labels[QUESTION_COLUMNS].copy(), mapping, submission, test_labels, test_only)
