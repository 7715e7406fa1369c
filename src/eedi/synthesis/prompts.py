"""Stage ``synthesize``: which misconceptions get new questions, and the prompts that ask for them.

* :func:`select_targets` - misconceptions with the fewest labelled training pairs first (0, then 1, ...),
  up to ``synthetic.budget``.
* :func:`few_shot_examples` - for each target, real questions whose misconceptions are nearest to the
  target's (cosine of the misconception-name embeddings). The target's own questions are never shown,
  so a synthetic row can't be a paraphrase of a labelled row (possibly a validation row) with its label.
* :func:`generation_messages` / :func:`judge_messages` - chat messages, rendered by the model's own chat
  template (:func:`render_chat`).
* :func:`output_schema` - the JSON schema vLLM's structured output enforces on every completion.

Nothing here needs vLLM: prompts are built (and their length checked) before the engine starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from eedi.data.schema import LETTERS

# The fields the generator fills in, in the order the schema (and the few-shot answers) list them.
TEXT_FIELDS = ["ConstructName", "SubjectName", "QuestionText", *[f"Answer{x}Text" for x in LETTERS]]
LETTER_FIELDS = ["CorrectAnswer", "MisconceptionAnswer"]
OUTPUT_FIELDS = TEXT_FIELDS + LETTER_FIELDS
# [min, max] characters of the generated construct and subject names (real ones: 5-150).
NAME_CHARS = {"ConstructName": (3, 200), "SubjectName": (3, 100)}

SYSTEM_PROMPT = (
    "You write multiple-choice maths questions for students aged 10 to 16, like Eedi's diagnostic "
    "questions. Each question has four answers A, B, C and D; exactly one is correct. The user names a "
    "misconception: one wrong answer must be exactly what a student holding that misconception would "
    "choose. Reply with one JSON object with the fields "
    + ", ".join(OUTPUT_FIELDS)
    + ". CorrectAnswer is the letter of the correct answer; MisconceptionAnswer is the letter of the "
    "wrong answer caused by the misconception. Write maths in LaTeX between \\( and \\)."
)

JUDGE_SYSTEM_PROMPT = (
    "You are an experienced maths teacher. You judge whether a wrong answer to a multiple-choice question "
    "is the answer a student with a given misconception would give."
)
JUDGE_CHOICES = ["1", "2", "3", "4", "5"]


@dataclass
class Example:
    """One real question shown to the generator, with the misconception behind one of its wrong answers."""

    question_id: int
    misconception_name: str
    fields: dict[str, str]
    """OUTPUT_FIELDS -> value (MisconceptionAnswer: the wrong letter that carries misconception_name)."""


@dataclass
class TargetPrompt:
    misconception_id: int
    misconception_name: str
    train_count: int
    construct: str | None
    subject: str | None
    examples: list[Example] = field(default_factory=list)
    prompt: str = ""
    """The rendered prompt (chat template applied)."""
    prompt_tokens: int = 0

    @property
    def prompt_hash(self) -> str:
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- targets


def labelled_train_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    return pairs[(pairs["split"] == "train") & pairs["MisconceptionId"].notna()]


def train_counts(pairs: pd.DataFrame, misconceptions: pd.DataFrame) -> pd.Series:
    """Labelled training pairs per MisconceptionId, 0 for those never seen (index: every MisconceptionId)."""
    counts = labelled_train_pairs(pairs)["MisconceptionId"].astype("int64").value_counts()
    ids = misconceptions["MisconceptionId"].astype("int64")
    return counts.reindex(ids, fill_value=0).astype("int64")


def select_targets(
    pairs: pd.DataFrame, misconceptions: pd.DataFrame, budget: int, max_train_examples: int
) -> pd.DataFrame:
    """Misconceptions with at most ``max_train_examples`` labelled pairs, fewest first (ties by id).

    Returns MisconceptionId, MisconceptionName, TrainCount; at most ``budget`` rows.
    """
    counts = train_counts(pairs, misconceptions)
    table = misconceptions[["MisconceptionId", "MisconceptionName"]].astype({"MisconceptionId": "int64"})
    table = table.assign(TrainCount=table["MisconceptionId"].map(counts).to_numpy())
    table = table[table["TrainCount"] <= max_train_examples]
    table = table.sort_values(["TrainCount", "MisconceptionId"], kind="stable")
    return table.head(budget).reset_index(drop=True)


# --------------------------------------------------------------------------- real questions


def question_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Rebuild the Kaggle question rows (four answer texts) of the training split from pairs.parquet.

    Every wrong answer is a pair (labelled or not) and each pair carries the correct answer's text, so
    all four texts are recoverable.
    """
    train = pairs[pairs["split"] == "train"]
    rows = []
    for qid, group in train.groupby("QuestionId", sort=True):
        first = group.iloc[0]
        row = {
            "QuestionId": int(qid),
            "ConstructName": first["ConstructName"],
            "SubjectName": first["SubjectName"],
            "QuestionText": first["QuestionText"],
            "CorrectAnswer": first["CorrectAnswer"],
            f"Answer{first['CorrectAnswer']}Text": first["CorrectAnswerText"],
        }
        for pair in group.itertuples(index=False):
            row[f"Answer{pair.WrongAnswer}Text"] = pair.WrongAnswerText
        rows.append(row)
    columns = [
        "QuestionId",
        "ConstructName",
        "SubjectName",
        "QuestionText",
        "CorrectAnswer",
        *[f"Answer{x}Text" for x in LETTERS],
    ]
    return pd.DataFrame(rows, columns=columns).set_index("QuestionId", drop=False)


def example_for(
    misconception_id: int, name: str, labelled: pd.DataFrame, questions: pd.DataFrame, skip_questions: set[int]
) -> Example | None:
    """The lowest-id question carrying the misconception that isn't in ``skip_questions``."""
    rows = labelled[labelled["MisconceptionId"] == misconception_id].sort_values("QuestionId")
    for pair in rows.itertuples(index=False):
        qid = int(pair.QuestionId)
        if qid in skip_questions:
            continue
        q = questions.loc[qid]
        fields = {name_: str(q[name_]) for name_ in TEXT_FIELDS}
        fields["CorrectAnswer"] = str(q["CorrectAnswer"])
        fields["MisconceptionAnswer"] = str(pair.WrongAnswer)
        return Example(qid, name, fields)
    return None


def nearest(target_vectors: np.ndarray, pool_vectors: np.ndarray) -> np.ndarray:
    """Indices of the pool sorted by cosine similarity to each target, nearest first (rows L2-normalised)."""
    sims = target_vectors @ pool_vectors.T
    if hasattr(sims, "toarray"):  # sparse TF-IDF rows
        sims = sims.toarray()
    # stable sort on the negated similarity: equal scores keep pool order (deterministic).
    return np.argsort(-np.asarray(sims), axis=1, kind="stable")


def known_context(misconception_id: int, labelled: pd.DataFrame) -> tuple[str | None, str | None]:
    """The most frequent construct and subject of the target's own labelled pairs (None if it has none)."""
    own = labelled[labelled["MisconceptionId"] == misconception_id]
    if own.empty:
        return None, None
    return own["ConstructName"].mode().iloc[0], own["SubjectName"].mode().iloc[0]


def few_shot_examples(
    targets: pd.DataFrame, pairs: pd.DataFrame, misconceptions: pd.DataFrame, name_vectors: np.ndarray, k: int
) -> list[TargetPrompt]:
    """Build one TargetPrompt per target with up to ``k`` examples from its nearest other misconceptions.

    ``name_vectors`` holds one L2-normalised row per row of ``misconceptions``. Examples are ordered
    from the least to the most similar, so the closest one sits right before the request (small models
    copy the nearest example most).
    """
    labelled = labelled_train_pairs(pairs)
    questions = question_table(pairs)
    ids = misconceptions["MisconceptionId"].astype("int64").to_numpy()
    names = misconceptions["MisconceptionName"].tolist()
    row_of = {int(m): i for i, m in enumerate(ids)}
    with_examples = set(labelled["MisconceptionId"].astype("int64").unique().tolist())
    pool = np.array([i for i, m in enumerate(ids) if int(m) in with_examples], dtype=np.int64)
    target_rows = np.array([row_of[int(m)] for m in targets["MisconceptionId"]], dtype=np.int64)
    order = (
        nearest(name_vectors[target_rows], name_vectors[pool])
        if len(pool) and len(target_rows)
        else np.zeros((len(target_rows), 0), dtype=np.int64)
    )
    prompts = []
    for t, target in enumerate(targets.itertuples(index=False)):
        construct, subject = known_context(int(target.MisconceptionId), labelled)
        examples: list[Example] = []
        used: set[int] = set()
        for j in order[t]:
            if len(examples) >= k:
                break
            mid = int(ids[pool[j]])
            if mid == int(target.MisconceptionId):
                continue
            example = example_for(mid, names[pool[j]], labelled, questions, used)
            if example is not None:
                examples.append(example)
                used.add(example.question_id)
        prompts.append(
            TargetPrompt(
                int(target.MisconceptionId),
                str(target.MisconceptionName),
                int(target.TrainCount),
                construct,
                subject,
                examples[::-1],
            )
        )
    return prompts


# --------------------------------------------------------------------------- messages


def _request(name: str, construct: str | None, subject: str | None) -> str:
    lines = [f"Misconception: {name}"]
    if construct is not None:
        lines += [f"Construct: {construct}", f"Subject: {subject}"]
    return "\n".join(lines)


def to_json(fields: dict[str, str]) -> str:
    # Compact separators: the structured-output grammar is compiled without free whitespace, so the
    # examples show exactly the form the model is allowed to write.
    return json.dumps({k: fields[k] for k in OUTPUT_FIELDS}, ensure_ascii=False, separators=(",", ":"))


def generation_messages(target: TargetPrompt) -> list[dict[str, str]]:
    """System prompt, one user/assistant turn per few-shot example, then the request for the target.

    The construct and subject are given when the target's own training rows tell them; then the examples
    show them too, else the examples show the misconception alone (a small model copies a placeholder
    such as "choose a construct" verbatim).
    """
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    known = target.construct is not None
    for example in target.examples:
        messages.append(
            {
                "role": "user",
                "content": _request(
                    example.misconception_name,
                    example.fields["ConstructName"] if known else None,
                    example.fields["SubjectName"],
                ),
            }
        )
        messages.append({"role": "assistant", "content": to_json(example.fields)})
    messages.append({"role": "user", "content": _request(target.misconception_name, target.construct, target.subject)})
    return messages


def judge_messages(misconception_name: str, fields: dict[str, str]) -> list[dict[str, str]]:
    correct = fields["CorrectAnswer"]
    wrong = fields["MisconceptionAnswer"]
    content = (
        f"Misconception: {misconception_name}\n"
        f"Question: {fields['QuestionText']}\n"
        f"Correct answer: {fields[f'Answer{correct}Text']}\n"
        f"Wrong answer: {fields[f'Answer{wrong}Text']}\n"
        "How likely is it that a student with this misconception gives exactly this wrong answer? "
        "Reply with one digit from 1 (not at all) to 5 (certainly)."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": content}]


def render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt string in the model's own chat template, ending where the assistant's answer begins."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template; "
            "synthetic.engine.model must be an instruction (chat) model"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def output_schema(question_chars: tuple[int, int], answer_chars: tuple[int, int]) -> dict:
    """JSON schema for one generated question, enforced while decoding.

    Besides the fields and their length bounds, it rules out MisconceptionAnswer == CorrectAnswer: one
    alternative (anyOf) per correct letter, whose MisconceptionAnswer may be any other letter: small
    models otherwise often point the misconception at the correct answer, which makes the row useless.
    """

    def text(bounds: tuple[int, int]) -> dict:
        return {"type": "string", "minLength": bounds[0], "maxLength": bounds[1]}

    def variant(correct: str) -> dict:
        properties: dict[str, dict] = {
            "ConstructName": text(NAME_CHARS["ConstructName"]),
            "SubjectName": text(NAME_CHARS["SubjectName"]),
            "QuestionText": text(question_chars),
        }
        for x in LETTERS:
            properties[f"Answer{x}Text"] = text(answer_chars)
        properties["CorrectAnswer"] = {"type": "string", "enum": [correct]}
        properties["MisconceptionAnswer"] = {"type": "string", "enum": [x for x in LETTERS if x != correct]}
        return {
            "type": "object",
            "properties": properties,
            "required": list(OUTPUT_FIELDS),
            "additionalProperties": False,
        }

    return {"anyOf": [variant(x) for x in LETTERS]}
