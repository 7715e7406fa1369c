"""The listwise prompt: question context plus a window of candidate misconceptions labelled A, B, C, ..."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from eedi.rerank.scoring import LABELS

SYSTEM_PROMPT = "You are an experienced maths teacher. You know the misconceptions that lead pupils to wrong answers."


# --------------------------------------------------------------------------- prompts


def build_prompt(pair: Mapping, candidate_names: Sequence[str], tokenizer) -> str:
    """The chat-formatted prompt for one window, ending where the model writes the answer label.

    ``pair`` is a ``pairs.parquet`` row: its ``QueryText`` (construct, subject, question,
    correct and incorrect answer, rendered by ``data.query_template``) is the question context.
    """
    n = len(candidate_names)
    if not 1 <= n <= len(LABELS):
        raise ValueError(f"a window holds 1..{len(LABELS)} candidates, got {n}")
    lines = [str(pair["QueryText"]), "", "Which misconception leads to the incorrect answer?"]
    lines += [f"{LABELS[i]}. {name}" for i, name in enumerate(candidate_names)]
    lines.append(f"Answer with the letter ({LABELS[0]}-{LABELS[n - 1]}) only.")
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def pair_lookup(pairs: pd.DataFrame) -> dict[str, dict]:
    return {row["QuestionId_Answer"]: row for row in pairs.to_dict("records")}


def misconception_names(misconceptions: pd.DataFrame) -> dict[int, str]:
    return dict(zip(misconceptions["MisconceptionId"].astype(int), misconceptions["MisconceptionName"]))


def window_prompts(
    windows: pd.DataFrame, pairs: Mapping[str, Mapping], names: Mapping[int, str], tokenizer
) -> list[str]:
    missing = sorted(set(windows["QuestionId_Answer"]) - set(pairs))
    if missing:
        raise KeyError(f"{len(missing)} candidate pair(s) are not in pairs.parquet, e.g. {missing[:3]}")
    return [
        build_prompt(pairs[key], [names[c] for c in ids], tokenizer)
        for key, ids in zip(windows["QuestionId_Answer"], windows["candidate_ids"])
    ]
