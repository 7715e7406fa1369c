"""Stage 2 (synthesize): target choice, prompts, validation, de-duplication, resume, and a real vLLM run.

The tests marked ``infer`` start one vLLM engine (SmolLM2-135M-Instruct on the CPU build) for the whole
module and run with .venv-infer; the others are pure Python/pandas plus the small models and run anywhere.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eedi.config import DEFAULT_QUERY_TEMPLATE, load_config
from eedi.data.kaggle import load_questions
from eedi.data.pairs import pivot_pairs
from eedi.data.schema import LETTERS, PAIR_COLUMNS
from eedi.errors import ConfigError
from eedi.layout import RunLayout
from eedi.synthesis.dedup import Deduplicator, SentenceEmbedder, TfidfEmbedder, dedup_text, load_embedder
from eedi.synthesis.engine import Candidate, engine_settings
from eedi.synthesis.parse import REASONS, parse_completion, validate_question
from eedi.synthesis.prompts import (
    OUTPUT_FIELDS,
    TargetPrompt,
    few_shot_examples,
    generation_messages,
    output_schema,
    render_chat,
    select_targets,
    to_json,
)
from eedi.synthesis.stage import build_prompts, filter_candidates, synthesize
from eedi.synthesis.store import (
    QUESTION_ID_START,
    REJECTED_COLUMNS,
    SYNTHETIC_COLUMNS,
    State,
    candidate_row,
    load_state,
    load_synthetic_pairs,
    save_state,
)

REPO = Path(__file__).resolve().parents[1]

NAMES = [
    "Adds the numerators and adds the denominators",  # 0: never seen
    "Adds numerators and denominators when adding fractions",  # 1: 2 examples
    "Thinks angles in a triangle sum to 360 degrees",  # 2: never seen
    "Multiplies instead of dividing",  # 3: 1 example
    "Ignores the negative sign",  # 4: 3 examples
    "Rounds down every time",  # 5: 1 example
]
# (QuestionId, correct letter, {wrong letter: MisconceptionId}); counts: 0:0, 1:2, 2:0, 3:1, 4:3, 5:1
SPEC = [
    (10, "A", {"B": 1, "C": 4}),
    (11, "B", {"A": 1, "D": 4}),
    (12, "C", {"A": 3, "B": 4}),
    (13, "D", {"A": 5}),
]


def make_pairs(spec=SPEC, names=NAMES) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = []
    for qid, correct, labels in spec:
        row = {
            "QuestionId": qid,
            "ConstructId": 100 + qid,
            "ConstructName": f"Construct {qid}",
            "SubjectId": 7,
            "SubjectName": f"Subject {qid}",
            "CorrectAnswer": correct,
            "QuestionText": f"What is question {qid}?",
        }
        for x in LETTERS:
            row[f"Answer{x}Text"] = f"answer {x} of {qid}"
            row[f"Misconception{x}Id"] = labels.get(x)
        rows.append(row)
    questions = pd.DataFrame(rows)
    for x in LETTERS:
        questions[f"Misconception{x}Id"] = questions[f"Misconception{x}Id"].astype("Int64")
    pairs = pivot_pairs(questions, "train", DEFAULT_QUERY_TEMPLATE)
    misconceptions = pd.DataFrame({"MisconceptionId": range(len(names)), "MisconceptionName": names})
    return pairs, misconceptions


GOOD = {
    "ConstructName": "Add fractions with different denominators",
    "SubjectName": "Adding and Subtracting Fractions",
    "QuestionText": r"Work out \( \frac{1}{2}+\frac{1}{3} \)",
    "AnswerAText": r"\( \frac{5}{6} \)",
    "AnswerBText": r"\( \frac{2}{5} \)",
    "AnswerCText": r"\( \frac{1}{6} \)",
    "AnswerDText": r"\( \frac{2}{6} \)",
    "CorrectAnswer": "A",
    "MisconceptionAnswer": "B",
}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def synthetic_config(run_dir: Path, *overrides: str):
    return load_config(REPO / "configs" / "cpu.yaml", [f"run_dir={run_dir}", *overrides])


# --------------------------------------------------------------------------- targets and prompts


def test_targets_fewest_examples_first_up_to_budget():
    pairs, misconceptions = make_pairs()
    assert select_targets(pairs, misconceptions, budget=4, max_train_examples=1)["MisconceptionId"].tolist() == [
        0,
        2,
        3,
        5,
    ]
    assert select_targets(pairs, misconceptions, budget=10, max_train_examples=0)["MisconceptionId"].tolist() == [0, 2]
    targets = select_targets(pairs, misconceptions, budget=10, max_train_examples=5)
    assert targets["MisconceptionId"].tolist() == [0, 2, 3, 5, 1, 4]
    assert targets["TrainCount"].tolist() == [0, 0, 1, 1, 2, 3]
    assert select_targets(pairs, misconceptions, budget=0, max_train_examples=5).empty


def test_prompt_has_target_nearest_examples_and_chat_template(smollm2_path):
    from transformers import AutoTokenizer

    pairs, misconceptions = make_pairs()
    # Hand-made name vectors: target 0 is nearest to 4, then 1, then 3; target 3 is nearest to itself.
    vectors = np.eye(6, dtype=np.float32)
    vectors[0] = [0.0, 0.5, 0.0, 0.2, 0.84, 0.0]
    vectors[3] = [0.0, 0.3, 0.0, 0.9, 0.0, 0.3]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    targets = select_targets(pairs, misconceptions, budget=6, max_train_examples=1)
    prompts = {p.misconception_id: p for p in few_shot_examples(targets, pairs, misconceptions, vectors, k=2)}

    first = prompts[0]
    # Ordered least similar first, so the nearest example (misconception 4) sits right before the request.
    assert [e.misconception_name for e in first.examples] == [NAMES[1], NAMES[4]]
    assert first.construct is None
    # Target 3 has one training question (12): it is never shown, but its construct and subject are used.
    third = prompts[3]
    assert 12 not in {e.question_id for e in third.examples}
    assert (third.construct, third.subject) == ("Construct 12", "Subject 12")
    assert len(third.examples) == 2 and len({e.question_id for e in third.examples}) == 2

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    text = render_chat(tokenizer, generation_messages(first))
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert f"Misconception: {NAMES[0]}<|im_end|>" in text
    example = first.examples[-1]
    assert to_json(example.fields) in text and "What is question 10?" in text
    assert example.fields["MisconceptionAnswer"] == "C"  # question 10: misconception 4 is on answer C
    assert "Construct:" not in text.split("<|im_start|>system")[1].split("<|im_end|>")[0]
    known = render_chat(tokenizer, generation_messages(third))
    assert "Construct: Construct 12\nSubject: Subject 12<|im_end|>\n<|im_start|>assistant\n" in known
    # every field the model must fill in is named in the prompt
    assert all(name in text for name in OUTPUT_FIELDS)


def test_nearest_examples_by_embedding(minilm_path):
    pairs, misconceptions = make_pairs()
    embedder = SentenceEmbedder(str(minilm_path), "cpu")
    vectors = embedder.encode(misconceptions["MisconceptionName"].tolist())
    targets = select_targets(pairs, misconceptions, budget=1, max_train_examples=0)
    (prompt,) = few_shot_examples(targets, pairs, misconceptions, vectors, k=1)
    assert prompt.examples[0].misconception_name == NAMES[1]  # "adds numerators and denominators"


def test_schema_rules_out_target_on_correct_answer():
    schema = output_schema((10, 300), (1, 60))
    assert len(schema["anyOf"]) == 4
    for variant in schema["anyOf"]:
        (correct,) = variant["properties"]["CorrectAnswer"]["enum"]
        assert correct not in variant["properties"]["MisconceptionAnswer"]["enum"]
        assert variant["required"] == OUTPUT_FIELDS
        assert variant["properties"]["QuestionText"]["maxLength"] == 300


def test_prompt_too_long_for_max_model_len(tmp_path, smollm2_path):
    from transformers import AutoTokenizer

    pairs, misconceptions = make_pairs()
    cfg = synthetic_config(tmp_path, "synthetic.engine.max_model_len=300", "synthetic.sampling.max_tokens=256")
    targets = select_targets(pairs, misconceptions, budget=2, max_train_examples=0)
    embedder = TfidfEmbedder(NAMES)
    with pytest.raises(ConfigError, match="synthetic.engine.max_model_len=300 is too small"):
        build_prompts(targets, pairs, misconceptions, embedder, AutoTokenizer.from_pretrained(smollm2_path), cfg)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"CorrectAnswer": "E"}, "bad_correct_letter"),
        ({"QuestionText": "   "}, "empty_question"),
        ({"AnswerCText": ""}, "empty_answer"),
        ({"SubjectName": ""}, "empty_construct_or_subject"),
        ({"MisconceptionAnswer": "F"}, "bad_target_letter"),
        ({"MisconceptionAnswer": "A"}, "target_is_correct"),
        ({"AnswerDText": r"\(  \FRAC{1}{6} \)"}, "duplicate_answers"),
        ({"QuestionText": "Work out"}, "question_length"),
        ({"AnswerBText": "x" * 61}, "answer_length"),
    ],
)
def test_validation_rejects_each_bad_case(change, reason):
    assert validate_question(GOOD, (10, 300), (1, 60)) is None
    assert validate_question({**GOOD, **change}, (10, 300), (1, 60)) == reason


def test_parse_completion():
    fields, reason = parse_completion(json.dumps(GOOD))
    assert reason is None and fields == GOOD
    assert parse_completion(json.dumps(GOOD)[:-20]) == (None, "unparsable")  # cut off by max_tokens
    assert parse_completion("[1, 2]") == (None, "unparsable")
    assert parse_completion(json.dumps({**GOOD, "CorrectAnswer": 1})) == (None, "missing_field")
    missing = dict(GOOD)
    del missing["SubjectName"]
    assert parse_completion(json.dumps(missing)) == (None, "missing_field")
    padded, _ = parse_completion(json.dumps({**GOOD, "QuestionText": "  " + GOOD["QuestionText"] + "\n"}))
    assert padded["QuestionText"] == GOOD["QuestionText"]


def test_filter_counts_every_reason(tmp_path):
    """Parse, validate, de-duplicate and cap in one pass: each completion gets exactly one reason."""
    cfg = synthetic_config(
        tmp_path,
        "synthetic.answer_chars=[1,60]",
        "synthetic.question_chars=[10,300]",
        "synthetic.per_target=1",
        "synthetic.sampling.n=4",
    )
    target_a = TargetPrompt(0, NAMES[0], 0, None, None)
    target_b = TargetPrompt(2, NAMES[2], 0, None, None)
    other = {
        **GOOD,
        "QuestionText": "Which angle is the largest in a right-angled triangle?",
        "AnswerBText": "The smallest",
    }
    texts = [
        (target_a, json.dumps(GOOD)),  # kept
        (target_a, json.dumps({**GOOD, "QuestionText": "Work out 3/4 - 1/8 as a fraction"})),  # over_per_target
        (target_a, '{"ConstructName": "Add'),  # unparsable
        (target_b, json.dumps({**GOOD, "AnswerDText": GOOD["AnswerAText"]})),  # duplicate_answers
        (target_b, json.dumps(GOOD)),  # exact_duplicate (of the first)
        (target_b, json.dumps(other)),  # kept
    ]
    candidates = [Candidate(t, 0, text) for t, text in texts]
    dedup = Deduplicator(TfidfEmbedder([dedup_text(GOOD["QuestionText"], "x"), NAMES[0]]), 0.99)
    kept = filter_candidates(candidates, cfg, dedup)
    assert [c.reason for c in candidates] == [
        None,
        "over_per_target",
        "unparsable",
        "duplicate_answers",
        "exact_duplicate",
        None,
    ]
    assert kept == [candidates[0], candidates[5]]
    assert Counter(c.reason for c in candidates) == {
        None: 2,
        "over_per_target": 1,
        "unparsable": 1,
        "duplicate_answers": 1,
        "exact_duplicate": 1,
    }


# --------------------------------------------------------------------------- de-duplication


REAL = [
    dedup_text(r"What is the range of these numbers? \( 29,24,13,30,23,5 \)", r"\( 23.5 \)"),
    dedup_text("A film starts at 14:35 and finishes at 16:10. How long is the film?", "1 hour 35 minutes"),
]
PLANTED = [
    dedup_text(r"what is the range of these numbers?   \( 29,24,13,30,23,5 \)", r"\( 23.5 \)"),  # exact (case, spaces)
    dedup_text("A film starts at 14:35 and ends at 16:10. How long is the film?", "1 hour 35 minutes"),  # near
    # the same question with another distractor: a different pair
    dedup_text("A film starts at 14:35 and finishes at 16:10. How long is the film?", "2 hours 25 minutes"),
    dedup_text("Simplify 12/18", "2/3"),  # new
    dedup_text("Simplify 12/18", "2/3"),  # exact, same batch
    dedup_text("Simplify: 12/18", "2/3"),  # near, same batch
]


def test_dedup_removes_planted_duplicates(minilm_path):
    dedup = Deduplicator(SentenceEmbedder(str(minilm_path), "cpu"), threshold=0.95)
    dedup.add(REAL)
    assert dedup.select(PLANTED) == [
        "exact_duplicate",
        "near_duplicate",
        None,
        None,
        "exact_duplicate",
        "near_duplicate",
    ]
    # selected texts join the reference: a later batch can't add them again
    assert dedup.select([PLANTED[3], dedup_text("Simplify 15/25", "3/5")]) == ["exact_duplicate", None]


def test_embedder_choice(tmp_path, minilm_path):
    assert isinstance(
        load_embedder(synthetic_config(tmp_path, f"synthetic.embedder={minilm_path}"), []), SentenceEmbedder
    )
    assert isinstance(load_embedder(synthetic_config(tmp_path, "synthetic.embedder=tfidf"), REAL), TfidfEmbedder)
    with pytest.raises(ConfigError, match="synthetic.embedder='models/none'"):
        load_embedder(synthetic_config(tmp_path, "synthetic.embedder=models/none"), [])


def test_dedup_cap_and_tfidf():
    dedup = Deduplicator(TfidfEmbedder(REAL + PLANTED), threshold=0.9)
    dedup.add(REAL)
    texts = [PLANTED[1], PLANTED[3], dedup_text("Simplify 15/25", "3/5"), dedup_text("Simplify 15/25 fully", "3/5")]
    # group 7 may keep one text: the third is over the cap and, not kept, doesn't block the fourth
    assert dedup.select(texts, groups=[1, 7, 7, 8], cap=1) == ["near_duplicate", None, "over_per_target", None]


# --------------------------------------------------------------------------- outputs without vLLM


def test_disabled_writes_empty_csv(tmp_path, prepared_sample):
    run_dir = _copy(prepared_sample, tmp_path / "run")
    summary = synthesize(synthetic_config(run_dir, "synthetic.enabled=false"))
    assert summary["status"] == "disabled"
    csv = RunLayout(run_dir).synthetic_rows
    assert csv.read_text().strip() == ",".join(SYNTHETIC_COLUMNS)
    assert json.loads((run_dir / "synthetic" / "summary.json").read_text())["status"] == "disabled"
    pairs = load_synthetic_pairs(synthetic_config(run_dir, "synthetic.use=true"))
    assert pairs.empty and list(pairs.columns) == PAIR_COLUMNS


def _write_rows(run_dir: Path, fields_and_targets: list[tuple[dict, int]]) -> pd.DataFrame:
    rows = []
    for i, (fields, target) in enumerate(fields_and_targets):
        c = Candidate(TargetPrompt(target, NAMES[0], 0, None, None, prompt="p"), 0, "", fields=fields)
        rows.append(candidate_row(c, QUESTION_ID_START + i, "model", {GOOD["ConstructName"]: 5}, {}))
    frame = pd.DataFrame(rows, columns=SYNTHETIC_COLUMNS)
    (run_dir / "synthetic").mkdir(parents=True, exist_ok=True)
    frame.to_csv(RunLayout(run_dir).synthetic_rows, index=False)
    return frame


def test_load_synthetic_pairs_schema(tmp_path, prepared_sample):
    run_dir = _copy(prepared_sample, tmp_path / "run")
    cfg = synthetic_config(run_dir, "synthetic.use=true")
    assert load_synthetic_pairs(cfg).empty  # synthesize not run: an optional input, nothing to add
    other = {**GOOD, "QuestionText": "Work out 2 - 5", "CorrectAnswer": "C", "MisconceptionAnswer": "D"}
    _write_rows(run_dir, [(GOOD, 4), (other, 15), (GOOD, 99_999)])  # 99999: not a known misconception
    pairs = load_synthetic_pairs(cfg)
    assert list(pairs.columns) == PAIR_COLUMNS
    assert pairs["split"].eq("synthetic").all()
    assert pairs[["QuestionId_Answer", "MisconceptionId"]].values.tolist() == [
        [f"{QUESTION_ID_START}_B", 4],
        [f"{QUESTION_ID_START + 1}_D", 15],
    ]
    assert pairs["ConstructId"].tolist() == [5, 5]
    assert pairs["WrongAnswerText"].tolist() == [GOOD["AnswerBText"], GOOD["AnswerDText"]]
    assert pairs["QueryText"].iloc[0].startswith("Construct: Add fractions")
    assert load_synthetic_pairs(synthetic_config(run_dir, "synthetic.use=false")).empty


def test_resume_state_keeps_only_committed_targets(tmp_path):
    out_dir = RunLayout(tmp_path)
    other = {**GOOD, "QuestionText": "Work out 2 - 5"}
    frame = _write_rows(tmp_path, [(GOOD, 1), (other, 2)])
    rejected = pd.DataFrame([["1", "unparsable", "{"], ["2", "unparsable", "{"]], columns=REJECTED_COLUMNS)
    save_state(out_dir, State("h1", {"1": {"candidates": 2}}, frame.astype(str), rejected))
    # state.json says only target 1 is done (as after a crash between writing the CSV and the state)
    state = load_state(out_dir, "h1")
    assert list(state.targets) == ["1"]
    assert state.rows["TargetMisconceptionId"].tolist() == ["1"] and len(state.rejected) == 1
    assert load_state(out_dir, "other-settings").targets == {}


def test_bad_engine_model_is_one_clear_error(tmp_path, prepared_sample, capsys):
    from eedi.cli import main

    run_dir = _copy(prepared_sample, tmp_path / "run")
    code = main(
        [
            "synthesize",
            "--config",
            str(REPO / "configs" / "cpu.yaml"),
            f"run_dir={run_dir}",
            "synthetic.enabled=true",
            "synthetic.engine.model=models/no-such-model",
        ]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and "synthetic.engine.model='models/no-such-model'" in errors[0]
    with pytest.raises(ConfigError, match="synthetic.engine.max_model_len"):
        synthetic_config(run_dir, "synthetic.engine.max_model_len=0")
    with pytest.raises(ConfigError, match="has no config.json"):
        engine_settings(synthetic_config(run_dir, f"synthetic.engine.model={tmp_path}"))


# --------------------------------------------------------------------------- real vLLM generation

BUDGET = 16
N = 2


@pytest.fixture(scope="module")
def generated(tmp_path_factory, prepared_sample, smollm2_path):
    """One real generation run: SmolLM2-135M on vLLM (CPU), 16 targets x 2 samples, in two batches, judged.

    TF-IDF instead of MiniLM for neighbours and duplicates saves embedding the ~2,100 real pairs here
    (a minute on 2 cores); the MiniLM path is tested above.
    """
    from eedi.pipeline.runner import run_stage

    run_dir = _copy(prepared_sample, tmp_path_factory.mktemp("synthetic") / "run")
    cfg = synthetic_config(
        run_dir,
        "synthetic.enabled=true",
        "synthetic.use=true",
        f"synthetic.budget={BUDGET}",
        f"synthetic.sampling.n={N}",
        "synthetic.checkpoint_every=8",
        "synthetic.judge.enabled=true",
        "synthetic.judge.threshold=1",
        f"synthetic.engine.model={smollm2_path}",
        "synthetic.embedder=tfidf",
        "synthetic.engine.enforce_eager=true",
        "synthetic.engine.kv_cache_gb=1",
    )
    summary = run_stage(cfg, "synthesize")
    return cfg, summary


def _written(cfg) -> pd.DataFrame:
    return pd.read_csv(RunLayout(cfg.run_dir).synthetic_rows, dtype=str, keep_default_na=False)


@pytest.mark.infer
@pytest.mark.slow
def test_generated_rows_pass_validation(generated):
    cfg, summary = generated
    rows = _written(cfg)
    assert list(rows.columns) == SYNTHETIC_COLUMNS
    assert len(rows) > 0 and len(rows) == summary["rows"] == summary["accepted"]
    # the Kaggle-schema loader accepts the file as a train.csv
    misconceptions = pd.read_parquet(Path(cfg.run_dir) / "misconceptions.parquet")
    load_questions(
        RunLayout(cfg.run_dir).synthetic_rows, with_labels=True, known_ids=set(misconceptions["MisconceptionId"])
    )
    unseen = set(
        select_targets(pd.read_parquet(Path(cfg.run_dir) / "pairs.parquet"), misconceptions, BUDGET, 0)[
            "MisconceptionId"
        ].astype(str)
    )
    for row in rows.to_dict("records"):
        letter = next(x for x in LETTERS if row[f"Misconception{x}Id"])
        fields = {**{k: row[k] for k in OUTPUT_FIELDS if k in row}, "MisconceptionAnswer": letter}
        assert validate_question(fields, cfg.synthetic.question_chars, cfg.synthetic.answer_chars) is None
        assert row[f"Misconception{letter}Id"] == row["TargetMisconceptionId"] in unseen
        assert sum(bool(row[f"Misconception{x}Id"]) for x in LETTERS) == 1
        assert row["Source"] == "synthetic" and row["GeneratorModel"].endswith("smollm2-135m-instruct")
        assert len(row["PromptHash"]) == 16 and row["Seed"] == str(cfg.synthetic.sampling.seed)
        assert row["JudgeScore"] in {"1", "2", "3", "4", "5"}
        assert len(row["FewShotQuestionIds"].split()) == cfg.synthetic.few_shot
    assert rows["QuestionId"].astype(int).min() >= QUESTION_ID_START and rows["QuestionId"].is_unique
    assert rows.groupby("TargetMisconceptionId").size().max() <= cfg.synthetic.per_target


@pytest.mark.infer
@pytest.mark.slow
def test_summary_counts_add_up(generated):
    cfg, summary = generated
    assert summary["candidates"] == BUDGET * N
    assert summary["accepted"] + sum(summary["rejected"].values()) == summary["candidates"]
    assert set(summary["rejected"]) <= set(REASONS)
    rejected = pd.read_csv(Path(cfg.run_dir) / "synthetic" / "rejected.csv", dtype=str, keep_default_na=False)
    assert Counter(rejected["Reason"]) == summary["rejected"]
    targets = summary["targets"]
    assert targets["selected"] == targets["done"] == targets["generated_now"] == BUDGET
    assert targets["covered"] == _written(cfg)["TargetMisconceptionId"].nunique()
    run = summary["this_run"]
    assert run["prompts"] == BUDGET and run["generate_calls"] >= 2 and run["tokens_per_s"] > 0
    assert run["engine_start_s"] > 0


@pytest.mark.infer
@pytest.mark.slow
def test_resume_skips_done_targets(generated):
    from eedi.pipeline.runner import run_stage

    cfg, _ = generated
    csv = RunLayout(cfg.run_dir).synthetic_rows
    before = csv.read_bytes()
    again = run_stage(cfg, "synthesize", force=True)
    assert again["this_run"]["generate_calls"] == 0 and again["this_run"]["engine_start_s"] == 0
    assert again["targets"]["skipped_done"] == BUDGET and again["targets"]["generated_now"] == 0
    assert csv.read_bytes() == before


@pytest.mark.infer
@pytest.mark.slow
def test_generated_rows_load_as_pairs(generated):
    cfg, summary = generated
    pairs = load_synthetic_pairs(cfg)
    assert list(pairs.columns) == PAIR_COLUMNS and len(pairs) == summary["rows"]
    assert pairs["MisconceptionId"].notna().all() and pairs["split"].eq("synthetic").all()


@pytest.mark.infer
def test_bad_engine_settings_fail_before_start(tmp_path, smollm2_path):
    from eedi.synthesis.engine import check_engine_devices, start_engine

    base = ["synthetic.enabled=true", f"synthetic.engine.model={smollm2_path}"]
    with pytest.raises(ConfigError, match=r"synthetic.engine.tensor_parallel_size=64 but only \d+ "):
        check_engine_devices(
            engine_settings(synthetic_config(tmp_path, *base, "synthetic.engine.tensor_parallel_size=64"))
        )
    with pytest.raises(ConfigError, match="synthetic.engine.quantization='int3'"):
        check_engine_devices(engine_settings(synthetic_config(tmp_path, *base, "synthetic.engine.quantization=int3")))
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        engine_settings(synthetic_config(tmp_path, *base, "synthetic.engine.max_model_len=1000000"))
    # a setting only vLLM can judge (AWQ weights expected, plain ones given): its error, wrapped into one
    with pytest.raises(ConfigError, match=r"^synthetic.engine: vLLM could not start"):
        start_engine(engine_settings(synthetic_config(tmp_path, *base, "synthetic.engine.quantization=awq")))
