"""The `eedi serve` API through FastAPI's TestClient, on the shared run's real retriever and reranker.

Results (25 ranked unique ids from the mapping; the same ranking the index stage wrote for the same query),
batches, /submission, labels, the limits (413/422 with a message), bearer-token auth (401), the CLI's
user errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from serve_support import SAMPLE_TEST, sample_items, sample_keys, shared_predictor

from eedi.cli import main
from eedi.serve.app import STATIC, Limits, create_app
from eedi.serve.labels import LabelStore

TOKEN = "s3cret-token"


def assert_same_ranking(served: list[int], expected: pd.DataFrame, key: str, tie: float = 1e-5) -> None:
    """``served`` is the index stage's top 25 (``expected``: its candidate rows for one pair), up to float ties.

    The index stage scores with a numpy matmul over a batch of 180 queries, the server with FAISS over a batch of
    a few: two misconceptions whose scores differ by ~1e-7 may swap places, nothing else may differ."""
    expected = expected.sort_values("rank")
    score = dict(zip(expected["MisconceptionId"].astype(int), expected["score"]))
    assert len(served) == 25 == len(set(served)) and set(served) <= set(score), key
    ordered = [score[m] for m in served]
    assert all(a >= b - tie for a, b in zip(ordered, ordered[1:])), f"{key}: not in the index stage's order"
    assert ordered[-1] >= expected["score"].iloc[24] - tie, f"{key}: a better candidate was left out"
    exact = served == expected["MisconceptionId"].head(25).astype(int).tolist()
    assert exact or max(abs(a - b) for a, b in zip(ordered, expected["score"].head(25))) < tie, key


@pytest.fixture(scope="module")
def predictor(reranked_sample: Path):
    return shared_predictor(str(reranked_sample), True)


@pytest.fixture(scope="module")
def mapping(reranked_sample: Path) -> dict[int, str]:
    frame = pd.read_parquet(reranked_sample / "misconceptions.parquet")
    return dict(zip(frame["MisconceptionId"].astype(int), frame["MisconceptionName"]))


@pytest.fixture
def store(tmp_path: Path, predictor) -> LabelStore:
    # Never in the shared run directory: tests only read it.
    return LabelStore(tmp_path / "labels.sqlite", predictor.run)


@pytest.fixture
def client(predictor, store) -> TestClient:
    return TestClient(create_app(predictor, store))


def test_healthz_reports_model_run_and_ready(client: TestClient, reranked_sample: Path, mapping):
    health = client.get("/healthz").json()
    assert health["ready"] is True
    assert health["run_dir"] == str(reranked_sample.resolve())
    assert health["run_id"].startswith(reranked_sample.name + "@")
    assert health["retriever"].endswith("retriever/fold_0/model")
    assert health["reranker"] == "merged" and health["reranker_backend"] == "transformers"
    assert health["misconceptions"] == len(mapping) and health["labels"] == 0


def test_predict_one_item_returns_25_ranked_unique_ids_from_the_mapping(client: TestClient, mapping, predictor):
    response = client.post("/predict", json=sample_items(1)[0])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reranked"] is True and body["run_id"] == predictor.run.run_id
    (result,) = body["results"]
    ranked = result["misconceptions"]
    assert [r["rank"] for r in ranked] == list(range(1, 26))
    ids = [r["misconception_id"] for r in ranked]
    assert len(set(ids)) == 25 and set(ids) <= set(mapping)
    assert all(r["misconception_name"] == mapping[r["misconception_id"]] for r in ranked)
    # The reranker scores the retriever's top reranker.depth; the rest keep the retriever's order and no score.
    depth = predictor.config.reranker.depth
    assert all(r["reranker_score"] is not None and 0 <= r["reranker_score"] <= 1 for r in ranked[:depth])
    assert all(r["reranker_score"] is None for r in ranked[depth:])
    tail = [r["retriever_score"] for r in ranked[depth:]]
    assert tail == sorted(tail, reverse=True)


def test_retrieval_only_ranking_is_the_index_stages_for_the_same_question(client: TestClient, reranked_sample: Path):
    """Served queries are rendered as in training: for the sample's test questions the served top 25 is the
    top 25 that `eedi index` wrote to candidates/test.parquet."""
    items, keys = sample_items(8), sample_keys(8)
    response = client.post("/predict", json={"items": items, "top_k": 25, "rerank": False})
    assert response.status_code == 200, response.text
    assert response.json()["reranked"] is False
    candidates = pd.read_parquet(reranked_sample / "candidates" / "test.parquet")
    for key, result in zip(keys, response.json()["results"]):
        expected = candidates[candidates["QuestionId_Answer"] == key]
        served = result["misconceptions"]
        assert_same_ranking([r["misconception_id"] for r in served], expected, key)
        scores = dict(zip(expected["MisconceptionId"], expected["score"]))
        assert [r["retriever_score"] for r in served] == pytest.approx(
            [scores[r["misconception_id"]] for r in served], abs=1e-5
        )


def test_batch_equals_single_requests(client: TestClient):
    items = sample_items(3)
    batch = client.post("/predict", json={"items": items, "top_k": 10}).json()["results"]
    assert len(batch) == 3
    for item, result in zip(items, batch):
        single = client.post("/predict", json={**item, "top_k": 10}).json()["results"][0]
        assert [r["misconception_id"] for r in single["misconceptions"]] == [
            r["misconception_id"] for r in result["misconceptions"]
        ]


def test_submission_from_test_csv_matches_the_index_ranking(client: TestClient, reranked_sample: Path):
    upload = SAMPLE_TEST.read_bytes()
    response = client.post("/submission?rerank=false", files={"file": ("test.csv", upload, "text/csv")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    submission = pd.read_csv(io.StringIO(response.text), dtype=str)
    sample = pd.read_csv(SAMPLE_TEST.with_name("sample_submission.csv"), dtype=str)
    assert sorted(submission["QuestionId_Answer"]) == sorted(sample["QuestionId_Answer"])
    candidates = pd.read_parquet(reranked_sample / "candidates" / "test.parquet")
    groups = dict(iter(candidates.groupby("QuestionId_Answer")))
    for key, ids in zip(submission["QuestionId_Answer"], submission["MisconceptionId"]):
        assert_same_ranking([int(i) for i in ids.split()], groups[key], key)


def test_submission_with_reranker_is_a_valid_kaggle_file(client: TestClient, predictor):
    from eedi.data.submission import validate_submission

    head = pd.read_csv(SAMPLE_TEST, dtype=str, keep_default_na=False).head(2)
    response = client.post("/submission", files={"file": ("test.csv", head.to_csv(index=False).encode(), "text/csv")})
    assert response.status_code == 200, response.text
    submission = pd.read_csv(io.StringIO(response.text))
    assert len(submission) == 2 * 3  # three wrong answers per question
    validate_submission(submission, None, None, known_ids=predictor.names.keys())


@pytest.mark.parametrize(
    "upload, status, message",
    [
        (b"QuestionId,QuestionText\n1,hi\n", 422, "missing required column"),
        (b"\xff\xfe not utf-8", 422, "not valid UTF-8"),
        (b"", 422, "file is empty"),
    ],
)
def test_submission_rejects_bad_csv_with_a_message(client: TestClient, upload: bytes, status: int, message: str):
    response = client.post("/submission", files={"file": ("test.csv", upload, "text/csv")})
    assert response.status_code == status
    assert message in response.json()["detail"] and response.json()["detail"].startswith("test.csv")


def test_accepting_a_suggestion_records_the_models_rank(client: TestClient, store: LabelStore, mapping):
    item = sample_items(2)[1]
    ranked = client.post("/predict", json=item).json()["results"][0]["misconceptions"]
    chosen = ranked[6]
    response = client.post("/labels", json={**item, "misconception_id": chosen["misconception_id"], "labeller": "ana"})
    assert response.status_code == 201, response.text
    label = response.json()
    assert label["model_rank"] == chosen["rank"] == 7
    assert label["retriever_score"] == pytest.approx(chosen["retriever_score"])
    assert label["reranked"] is True and label["labeller"] == "ana"
    assert label["misconception_name"] == mapping[chosen["misconception_id"]]
    # One outside the model's top index.top_k: stored, with no rank.
    outside = next(
        m
        for m in mapping
        if m
        not in {
            r["misconception_id"]
            for r in client.post("/predict", json={**item, "top_k": 100}).json()["results"][0]["misconceptions"]
        }
    )
    other = client.post(
        "/labels",
        json={
            **item,
            "wrong_answer": next(x for x in "ABCD" if x not in (item["correct_answer"], item["wrong_answer"])),
            "misconception_id": outside,
            "labeller": "bo",
        },
    ).json()
    assert other["model_rank"] is None
    listed = client.get("/labels").json()
    assert [row["label_id"] for row in listed] == [other["label_id"], label["label_id"]]
    exported = pd.read_csv(io.StringIO(client.get("/labels.csv").text), dtype=str, keep_default_na=False)
    assert len(exported) == 1 and exported.loc[0, "QuestionText"] == item["question_text"]
    assert exported.loc[0, f"Misconception{item['wrong_answer']}Id"] == str(chosen["misconception_id"])
    assert store.count() == 2


def test_label_for_an_unknown_misconception_is_refused(client: TestClient, store: LabelStore):
    response = client.post("/labels", json={**sample_items(1)[0], "misconception_id": 999999, "labeller": "ana"})
    assert response.status_code == 422 and "not in the run's misconceptions" in response.json()["detail"]
    assert store.count() == 0


@pytest.mark.parametrize(
    "change, field",
    [
        ({"question_text": ""}, "question_text"),
        ({"question_text": "   "}, "question_text"),
        ({"answer_c_text": None}, "answer_c_text"),
        ({"wrong_answer": "E"}, "wrong_answer"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 101}, "top_k"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_item_is_a_422_naming_the_field(client: TestClient, change: dict, field: str):
    item = {**sample_items(1)[0], **change}
    item = {k: v for k, v in item.items() if v is not None}
    response = client.post("/predict", json=item)
    assert response.status_code == 422
    assert field in response.json()["detail"]


def test_wrong_answer_equal_to_correct_is_refused(client: TestClient):
    item = sample_items(1)[0]
    response = client.post("/predict", json={**item, "wrong_answer": item["correct_answer"]})
    assert response.status_code == 422 and "is the correct answer" in response.json()["detail"]


def test_not_json_is_a_422(client: TestClient):
    response = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_limits_text_length_batch_and_body_size(predictor, store):
    limits = Limits(max_question_chars=200, max_batch=3, max_body_bytes=4000, max_upload_bytes=3000)
    client = TestClient(create_app(predictor, store, limits=limits))
    item = sample_items(1)[0]
    long = client.post("/predict", json={**item, "question_text": "x" * 201})
    assert long.status_code == 422 and "question_text" in long.json()["detail"] and "200" in long.json()["detail"]
    batch = client.post("/predict", json={"items": [item] * 4})
    assert batch.status_code == 422 and "items" in batch.json()["detail"]
    assert client.post("/predict", json={"items": []}).status_code == 422
    big = json.dumps({**item, "construct_name": "y" * 5000}).encode()
    response = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "4000 bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit still holds while the body streams in
        for _ in range(10):
            yield b" " * 1000

    streamed = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    upload = client.post("/submission", files={"file": ("test.csv", SAMPLE_TEST.read_bytes(), "text/csv")})
    assert upload.status_code == 413
    assert client.post("/predict", json={**item, "top_k": 3}).status_code == 200  # within limits: served


def test_bearer_token_is_required_when_set(predictor, store):
    client = TestClient(create_app(predictor, store, token=TOKEN))
    item = sample_items(1)[0]
    for method, path, kwargs in [
        ("get", "/healthz", {}),
        ("post", "/predict", {"json": item}),
        ("get", "/labels", {}),
        ("get", "/labels.csv", {}),
        ("post", "/labels", {"json": {**item, "misconception_id": 1, "labeller": "x"}}),
        ("post", "/submission", {"files": {"file": ("t.csv", b"x", "text/csv")}}),
    ]:
        anonymous = getattr(client, method)(path, **kwargs)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"}, **kwargs)
        assert wrong.status_code == 401, path
    assert store.count() == 0
    ok = client.post("/predict", json=item, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    # The page and the API docs carry no data: they load without the token.
    assert client.get("/").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_rerank_on_a_server_without_reranker_is_a_422(reranked_sample: Path, tmp_path: Path):
    retrieval_only = shared_predictor(str(reranked_sample), False)
    client = TestClient(create_app(retrieval_only, LabelStore(tmp_path / "l.sqlite", retrieval_only.run)))
    assert client.get("/healthz").json()["reranker"] is None
    item = sample_items(1)[0]
    assert client.post("/predict", json=item).json()["reranked"] is False
    response = client.post("/predict", json={**item, "rerank": True})
    assert response.status_code == 422 and "no reranker" in response.json()["detail"]


def test_page_is_served_and_never_uses_innerhtml(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and 'id="question-form"' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200
    # All text goes in through textContent (tests/test_serve_browser.py checks it in a real browser): no
    # HTML-parsing sink appears in the code (comments aside).
    import re

    code = re.sub(r"//[^\n]*", "", script.text)
    assert script.text == (STATIC / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", code)
    assert code.count("textContent") >= 3


def test_serve_cli_user_errors_are_one_line(tmp_path: Path, capsys):
    assert main(["serve", "--run-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: run directory {tmp_path / 'nope'} does not exist\n"
    assert main(["serve", "--run-dir", str(tmp_path)]) == 2
    assert "not a run directory (no manifest.json)" in capsys.readouterr().err
    from eedi.config import config_to_dict, load_config

    (tmp_path / "manifest.json").write_text(json.dumps({"config": config_to_dict(load_config()), "stages": {}}))
    assert main(["serve", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a trained retriever in") and err.count("\n") == 1
    assert "run `eedi train-retriever` first" in err


def test_serve_command_answers_and_a_killed_server_keeps_its_labels(reranked_sample: Path, tmp_path: Path):
    """`eedi serve` itself (a subprocess on a free loopback port): it answers, and labels it committed survive
    SIGKILL. The run is a light copy of the shared one (labels.sqlite is written into the run directory)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    run = tmp_path / "run"
    run.mkdir()
    for name in ("manifest.json", "misconceptions.parquet", "pairs.parquet"):
        (run / name).write_bytes((reranked_sample / name).read_bytes())
    (run / "retriever").symlink_to(reranked_sample / "retriever", target_is_directory=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    server = subprocess.Popen(
        [sys.executable, "-m", "eedi", "serve", "--run-dir", str(run), "--port", str(port), "--token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "eedi serve did not come up in 300 s"
            try:
                if httpx.get(base + "/healthz", headers=auth, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        health = httpx.get(base + "/healthz", headers=auth).json()
        assert health["reranker"] is None and health["run_dir"] == str(run.resolve())  # the copy has no reranker
        assert httpx.get(base + "/healthz").status_code == 401
        item = sample_items(1)[0]
        ranked = httpx.post(base + "/predict", json=item, headers=auth, timeout=60).json()["results"][0]
        ids = [r["misconception_id"] for r in ranked["misconceptions"]]
        assert len(set(ids)) == 25
        stored = [
            httpx.post(
                base + "/labels",
                headers=auth,
                timeout=60,
                json={**item, "wrong_answer": wrong, "misconception_id": ids[n], "labeller": "kill-test"},
            ).json()["label_id"]
            for n, wrong in enumerate(x for x in "ABCD" if x != item["correct_answer"])
        ]
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    from eedi.serve.predictor import run_info

    store = LabelStore.in_run_dir(run, run_info(run))
    assert sorted(r["label_id"] for r in store.labels()) == sorted(stored)
    assert len(stored) == 3 and store.export().shape[0] == 1


def test_served_query_text_is_what_pivot_pairs_renders_for_training():
    """Every field a query_template may use, on the sample's test questions (missing construct/subject ids too)."""
    from eedi.data.pairs import pivot_pairs
    from eedi.data.schema import PAIR_COLUMNS
    from eedi.serve.labels import Question
    from eedi.serve.predictor import served_pairs

    fields = [
        "QuestionId",
        "ConstructId",
        "ConstructName",
        "SubjectId",
        "SubjectName",
        "QuestionText",
        "CorrectAnswer",
        "CorrectAnswerText",
        "WrongAnswer",
        "WrongAnswerText",
    ]
    template = " | ".join(f"{{{f}}}" for f in fields)
    test = pd.read_csv(SAMPLE_TEST, dtype=str, keep_default_na=False).head(12).reset_index(drop=True)
    test["QuestionId"] = range(len(test))
    test["ConstructId"] = [None if i % 3 == 0 else i for i in range(len(test))]
    test["SubjectId"] = [None if i % 2 else 7 for i in range(len(test))]
    for column in ("QuestionId", "ConstructId", "SubjectId"):
        test[column] = test[column].astype("Int64")
    expected = pivot_pairs(test, "test", template)
    items = []
    for row in test.to_dict("records"):
        question = Question(
            question_text=row["QuestionText"],
            correct_answer=row["CorrectAnswer"],
            construct_name=row["ConstructName"],
            subject_name=row["SubjectName"],
            construct_id=None if pd.isna(row["ConstructId"]) else int(row["ConstructId"]),
            subject_id=None if pd.isna(row["SubjectId"]) else int(row["SubjectId"]),
            **{f"answer_{x.lower()}_text": row[f"Answer{x}Text"] for x in "ABCD"},
        )
        items += [(question, x) for x in "ABCD" if x != row["CorrectAnswer"]]
    # pivot_pairs numbers questions by QuestionId, served_pairs by item position: make them agree
    served = served_pairs(items, template.replace("{QuestionId}", "{QuestionId_Answer}"))
    keys = [f"item{i}" for i in range(len(items))]
    want = [
        text.replace(f"{qid} |", f"{key} |", 1)
        for text, qid, key in zip(expected["QueryText"], expected["QuestionId"], keys)
    ]
    assert [row["QueryText"] for row in served] == want
    assert list(served[0]) == PAIR_COLUMNS
    with pytest.raises(ValueError, match="must differ from the correct answer"):
        served_pairs([(items[0][0], items[0][0].correct_answer)], template)
