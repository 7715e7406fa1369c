"""The label store of `eedi serve`: Kaggle train.csv export, WAL durability, concurrent and killed writers.

No model is needed here: these tests drive eedi.serve.labels directly (and `eedi export-labels`)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

import eedi
from eedi.cli import main
from eedi.data.kaggle import load_questions
from eedi.data.schema import TRAIN_COLUMNS
from eedi.layout import RunLayout
from eedi.serve.labels import SERVED_QUESTION_ID_BASE, Label, LabelError, LabelStore, Question, RunInfo

RUN = RunInfo(run_id="test-run@0123", run_dir="/runs/test", git_commit="abc123")
SRC = str(Path(eedi.__file__).resolve().parents[1])


def question(n: int = 0, correct: str = "A") -> Question:
    return Question(
        question_text=rf"\( \frac{{1}}{{{n + 2}}} + \frac{{1}}{{4}} = \) ?",
        answer_a_text=f"right {n}",
        answer_b_text=f"wrong b {n}",
        answer_c_text=f"wrong c {n}",
        answer_d_text=f"wrong d {n}",
        correct_answer=correct,
        construct_name="Add fractions",
        subject_name="Fractions",
        construct_id=7,
        subject_id=None,
    )


def label(q: Question, wrong: str, mid: int, who: str = "ana", rank: int | None = 3, **kw) -> Label:
    return Label(
        question=q,
        wrong_answer=wrong,
        misconception_id=mid,
        misconception_name=f"misconception {mid}",
        labeller=who,
        model_rank=rank,
        retriever_score=0.5,
        reranker_score=None,
        reranked=False,
        **kw,
    )


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    return LabelStore.in_run_dir(tmp_path, RUN)


def test_label_records_who_when_rank_and_run(store: LabelStore):
    row = store.add(label(question(), "B", 12, who="  ana  ", rank=4))
    assert row["labeller"] == "ana"
    assert row["model_rank"] == 4 and row["misconception_id"] == 12
    assert (row["run_id"], row["run_dir"], row["git_commit"]) == (RUN.run_id, RUN.run_dir, RUN.git_commit)
    assert row["created_at"].endswith("+00:00")  # UTC
    assert row["question_id"] == SERVED_QUESTION_ID_BASE + 1
    assert row["wrong_answer_text"] == "wrong b 0"
    assert store.labels() == [row]


def test_export_is_kaggle_train_csv_that_prepare_accepts(store: LabelStore, tmp_path: Path):
    first, second = question(0), question(1, correct="C")
    store.add(label(first, "B", 5))
    store.add(label(first, "D", 6, who="bo"))
    store.add(label(second, "A", 7))
    store.add(label(first, "B", 8, who="bo", rank=None))  # a correction: the latest label of 1_B wins
    out = tmp_path / "export" / "train.csv"
    store.export_csv(out)
    exported = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(exported.columns) == TRAIN_COLUMNS
    assert exported["QuestionId"].tolist() == [str(SERVED_QUESTION_ID_BASE + 1), str(SERVED_QUESTION_ID_BASE + 2)]
    row = exported.iloc[0]
    assert (row["MisconceptionAId"], row["MisconceptionBId"], row["MisconceptionCId"], row["MisconceptionDId"]) == (
        "",
        "8",
        "",
        "6",
    )
    assert row["QuestionText"] == first.question_text and row["ConstructId"] == "7" and row["SubjectId"] == ""
    assert exported.iloc[1]["CorrectAnswer"] == "C" and exported.iloc[1]["MisconceptionAId"] == "7"
    # The next training reads it with the same strict loader as any Kaggle train.csv.
    loaded = load_questions(out, with_labels=True, known_ids={5, 6, 7, 8})
    assert int(loaded.loc[0, "MisconceptionDId"]) == 6 and pd.isna(loaded.loc[1, "MisconceptionDId"])
    assert int(loaded.loc[1, "MisconceptionAId"]) == 7


def test_same_question_keeps_one_id_and_a_given_id_is_checked(store: LabelStore):
    a = store.add(label(question(0), "B", 1))
    b = store.add(label(question(0), "C", 2))
    assert a["question_id"] == b["question_id"]
    kaggle = store.add(label(question(5), "B", 3, question_id=42))
    assert kaggle["question_id"] == 42
    with pytest.raises(LabelError, match="QuestionId 42 already names a different question"):
        store.add(label(question(6), "B", 3, question_id=42))
    with pytest.raises(LabelError, match="already stored as QuestionId"):
        store.add(label(question(0), "B", 3, question_id=43))
    # Served ids keep counting above the base, not above a client's id.
    assert store.add(label(question(7), "B", 3))["question_id"] == SERVED_QUESTION_ID_BASE + 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(wrong="A"), "is the correct answer"),
        (dict(who="   "), "labeller is empty"),
        (dict(wrong="E"), "answers are A-D"),
    ],
)
def test_invalid_labels_are_refused_and_leave_nothing(store: LabelStore, bad: dict, message: str):
    with pytest.raises(LabelError, match=message):
        store.add(label(question(), bad.get("wrong", "B"), 1, who=bad.get("who", "ana")))
    assert store.count() == 0
    assert store.export().empty


def test_database_is_in_wal_mode(store: LabelStore):
    store.add(label(question(), "B", 1))
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.path == RunLayout(store.path.parent).labels_db


def test_parallel_threads_lose_no_label(store: LabelStore):
    threads, per_thread = 8, 25
    errors: list[BaseException] = []

    def write(t: int) -> None:
        try:
            for i in range(per_thread):
                # Half the writes race on one shared question (its row is created once), half on their own.
                q = question(0) if i % 2 else question(100 + t)
                store.add(label(q, "BCD"[i % 3], t * 1000 + i, who=f"writer{t}"))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    stored = store.labels()
    assert len(stored) == threads * per_thread
    assert {r["misconception_id"] for r in stored} == {t * 1000 + i for t in range(threads) for i in range(per_thread)}
    assert len({r["label_id"] for r in stored}) == len(stored)
    assert len(store.export()) == 1 + threads  # the shared question and one per thread


WRITER = r"""
import sys
from eedi.serve.labels import Label, LabelStore, Question, RunInfo
store = LabelStore(sys.argv[1], RunInfo("test-run@0123", "/runs/test"))
proc, count = int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    q = Question(f"question {proc} {i // 3}", "a", "b", "c", "d", "A")
    row = store.add(Label(q, "BCD"[i % 3], proc * 100000 + i, f"m{i}", f"proc{proc}", i + 1, 0.1, None, False))
    print(row["label_id"], row["misconception_id"], flush=True)  # printed only once committed
"""


def _writer(db: Path, proc: int, count: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(proc), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_parallel_processes_lose_no_label(store: LabelStore):
    procs, per_proc = 4, 30
    writers = [_writer(store.path, p, per_proc) for p in range(procs)]
    reported = set()
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        reported |= {int(line.split()[1]) for line in out.splitlines()}
    assert len(reported) == procs * per_proc
    assert {r["misconception_id"] for r in store.labels()} == reported


def test_killed_writer_loses_nothing_committed(store: LabelStore):
    writer = _writer(store.path, 7, 100000)
    committed = set()
    for line in writer.stdout:
        committed.add(int(line.split()[1]))
        if len(committed) >= 40:
            break
    assert len(committed) >= 40, writer.stderr.read() if writer.poll() is not None else "writer stalled"
    writer.send_signal(signal.SIGKILL)  # mid-stream: it may be inside a transaction right now
    writer.wait(timeout=30)
    committed |= {int(line.split()[1]) for line in writer.stdout.read().splitlines() if line.strip()}
    stored = {r["misconception_id"] for r in store.labels()}
    assert committed <= stored
    # No half-written transaction: the file is sound and every question row came with its label.
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert (
            conn.execute(
                "SELECT count(*) FROM questions WHERE question_id NOT IN (SELECT question_id FROM labels)"
            ).fetchone()[0]
            == 0
        )
    store.add(label(question(), "B", 1))  # and the store still takes writes
    assert store.count() == len(stored) + 1


def test_export_labels_cli(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"config": {}, "stages": {}}))
    assert main(["export-labels", "--run-dir", str(run_dir), "--out", str(tmp_path / "train.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no label has been recorded" in err and err.count("\n") == 1
    store = LabelStore.in_run_dir(run_dir, RUN)
    store.add(label(question(0), "B", 11))
    store.add(label(question(0), "C", 12))
    assert main(["export-labels", "--run-dir", str(run_dir), "--out", str(tmp_path / "train.csv")]) == 0
    assert "1 question(s), 2 labelled wrong answer(s) from 2 label(s)" in capsys.readouterr().out
    assert (tmp_path / "train.csv").read_text() == store.export_csv()
    assert main(["export-labels", "--run-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
