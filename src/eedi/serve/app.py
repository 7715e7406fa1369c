"""The FastAPI app of ``eedi serve``: JSON API, the labelling page, the label store.

Routes (OpenAPI at ``/docs``, schema at ``/openapi.json``):

* ``GET /`` - the labelling page (static HTML/JS/CSS from ``static/``; it holds no data, so no token).
* ``GET /healthz`` - model, run, readiness.
* ``POST /predict`` - one item, or ``{"items": [...]}``: ranked misconceptions with both models' scores.
* ``POST /submission`` - a ``test.csv`` upload (multipart field ``file``) -> ``submission.csv``.
* ``POST /labels`` - record an accepted misconception; ``GET /labels`` - the latest labels;
  ``GET /labels.csv`` - every label as Kaggle ``train.csv`` rows.

Limits: text lengths and batch size in the pydantic models (422 with the field named), body size in
:class:`BodyLimit` (413). With a token every route but the page and the docs needs
``Authorization: Bearer <token>`` (401 otherwise).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at run time, and the request
# models are built inside create_app (their limits are per app), where string annotations cannot be resolved.

import json
import logging
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from eedi.errors import DataError
from eedi.serve.labels import Label, LabelError, LabelStore, Question
from eedi.serve.predictor import Predictor

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
Letter = Literal["A", "B", "C", "D"]


@dataclass(frozen=True)
class Limits:
    max_question_chars: int = 4000
    max_answer_chars: int = 1000
    max_name_chars: int = 300
    """Construct and subject names, and the labeller's name."""
    max_batch: int = 64
    max_body_bytes: int = 1 << 20
    """JSON bodies (predict, labels)."""
    max_upload_bytes: int = 8 << 20
    """test.csv uploads (the competition's test.csv is a few hundred KB)."""
    max_upload_questions: int = 5000


# --------------------------------------------------------------------------- request models


def item_model(limits: Limits) -> type[BaseModel]:
    """The item schema with this server's text limits (pydantic enforces them: 422 naming the field)."""
    # Distinct names from the fields and methods below: a class body looks its annotations up in itself first.
    QuestionText = Annotated[str, Field(min_length=1, max_length=limits.max_question_chars)]
    AnswerText = Annotated[str, Field(min_length=1, max_length=limits.max_answer_chars)]
    NameText = Annotated[str, Field(max_length=limits.max_name_chars)]

    class Item(BaseModel):
        """One (question, wrong answer): the question, its four answers, which is correct and which is wrong."""

        # Texts are kept exactly as sent (no stripping): the query must be byte-for-byte what training rendered
        # from train.csv, whose texts keep their spaces. Blank ones are refused, as `eedi prepare` refuses them.
        model_config = ConfigDict(extra="forbid")
        question_text: QuestionText
        answer_a_text: AnswerText
        answer_b_text: AnswerText
        answer_c_text: AnswerText
        answer_d_text: AnswerText
        correct_answer: Letter
        wrong_answer: Letter
        construct_name: NameText = ""
        subject_name: NameText = ""
        construct_id: Annotated[int, Field(ge=0)] | None = None
        subject_id: Annotated[int, Field(ge=0)] | None = None

        @field_validator("question_text", "answer_a_text", "answer_b_text", "answer_c_text", "answer_d_text")
        @classmethod
        def _not_blank(cls, text: str) -> str:
            if not text.strip():
                raise ValueError("must not be blank")
            return text

        @model_validator(mode="after")
        def _wrong_is_not_correct(self):
            if self.wrong_answer == self.correct_answer:
                raise ValueError(f"wrong_answer {self.wrong_answer} is the correct answer: pick one of the others")
            return self

        def question(self) -> Question:
            return Question(
                question_text=self.question_text,
                answer_a_text=self.answer_a_text,
                answer_b_text=self.answer_b_text,
                answer_c_text=self.answer_c_text,
                answer_d_text=self.answer_d_text,
                correct_answer=self.correct_answer,
                construct_name=self.construct_name,
                subject_name=self.subject_name,
                construct_id=self.construct_id,
                subject_id=self.subject_id,
            )

    return Item


class RankedOut(BaseModel):
    rank: int = Field(description="1-based position in the final ranking")
    misconception_id: int
    misconception_name: str
    retriever_score: float
    reranker_score: float | None = Field(description="None without reranking or below reranker.depth")
    score: float = Field(description="what the ranking is sorted by (fused score when reranked)")


class ItemResult(BaseModel):
    misconceptions: list[RankedOut]


class PredictResponse(BaseModel):
    run_id: str
    reranked: bool
    results: list[ItemResult] = Field(description="one per item, in request order")


class LabelOut(BaseModel):
    label_id: int
    created_at: str
    labeller: str
    question_id: int
    wrong_answer: str
    misconception_id: int
    misconception_name: str
    model_rank: int | None
    retriever_score: float | None
    reranker_score: float | None
    reranked: bool
    run_id: str
    run_dir: str
    git_commit: str | None
    question_text: str
    correct_answer: str
    wrong_answer_text: str
    construct_name: str
    subject_name: str


# --------------------------------------------------------------------------- body size


class BodyLimit:
    """ASGI middleware: 413 for a body over the limit, before any of it reaches pydantic or the upload parser.

    A declared Content-Length is checked at once; a chunked body is read up to the limit and replayed."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    def _limit(self, path: str) -> int:
        return self.limits.max_upload_bytes if path.rstrip("/") == "/submission" else self.limits.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self._limit(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _reject(send, 400, "invalid Content-Length header")
            if int(declared) > limit:
                return await _reject(
                    send, 413, f"request body of {int(declared)} bytes is over this route's limit of {limit} bytes"
                )
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _reject(send, 413, f"request body is over this route's limit of {limit} bytes")
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


async def _reject(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- app


def create_app(
    predictor: Predictor, store: LabelStore, token: str | None = None, limits: Limits | None = None
) -> FastAPI:
    limits = limits or Limits()
    Item = item_model(limits)
    labeller_name = Annotated[str, Field(min_length=1, max_length=limits.max_name_chars)]

    class ItemRequest(Item):
        """A single item, with the options at top level."""

        top_k: Annotated[int, Field(ge=1, le=predictor.top_k)] = 25
        rerank: bool | None = Field(None, description="None: rerank when the server has a reranker")

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[list[Item], Field(min_length=1, max_length=limits.max_batch)]
        top_k: Annotated[int, Field(ge=1, le=predictor.top_k)] = 25
        rerank: bool | None = Field(None, description="None: rerank when the server has a reranker")

    def _which(body) -> str:
        return "batch" if isinstance(body, dict) and "items" in body else "item"

    # The shape decides the model, so a bad body gets the errors of the model it meant, not of both.
    PredictRequest = Annotated[
        Annotated[BatchRequest, Tag("batch")] | Annotated[ItemRequest, Tag("item")], Discriminator(_which)
    ]

    class LabelRequest(Item):
        """Accept ``misconception_id`` for the item's wrong answer. The server ranks the item again to record the
        model's rank of it (it never trusts a client's rank)."""

        misconception_id: int
        labeller: labeller_name
        rerank: bool | None = Field(None, description="the ranking the labeller saw (None: the server default)")
        question_id: Annotated[int, Field(ge=0)] | None = Field(
            None, description="Kaggle QuestionId of a known question; None: assigned from the content"
        )

    def authorize(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="eedi serve",
        version="1",
        description="Misconception suggestions for (question, wrong answer) pairs from a trained eedi run, "
        "and the labels people accept. See docs/serve.md.",
    )
    app.add_middleware(BodyLimit, limits=limits)
    auth = [Depends(authorize)]

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        # One readable line per problem ("body.items.0.question_text: String should have at least 1 character")
        # beside FastAPI's usual structured list.
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return JSONResponse(
            status_code=422,
            content={"detail": "; ".join(problems), "errors": json.loads(json.dumps(err.errors(), default=str))},
        )

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", dependencies=auth)
    def healthz() -> dict:
        """The model and run being served, whether it is ready, and how many labels are stored."""
        return {
            **predictor.health(),
            "labels": store.count(),
            "auth": token is not None,
            "limits": asdict(limits),
            "katex": (STATIC / "vendor" / "katex" / "katex.min.js").is_file(),
        }

    @app.post("/predict", dependencies=auth, response_model=PredictResponse)
    def predict(body: PredictRequest) -> PredictResponse:
        """Top-k misconceptions for one item or a batch of items."""
        items = body.items if isinstance(body, BatchRequest) else [body]
        try:
            reranked = predictor.resolve_rerank(body.rerank)
            ranked = predictor.predict(
                [(item.question(), item.wrong_answer) for item in items], top_k=body.top_k, rerank=reranked
            )
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        return PredictResponse(
            run_id=predictor.run.run_id,
            reranked=reranked,
            results=[ItemResult(misconceptions=[RankedOut(**asdict(r)) for r in result]) for result in ranked],
        )

    @app.post(
        "/submission",
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}, "description": "submission.csv"}},
    )
    def submission(
        file: UploadFile = File(..., description="a Kaggle test.csv"),
        rerank: bool | None = Query(None, description="None: rerank when the server has a reranker"),
    ):
        """A Kaggle ``test.csv`` -> ``submission.csv``: 25 distinct ids per wrong answer, as ``eedi infer``
        writes it."""
        data = file.file.read(limits.max_upload_bytes + 1)
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"test.csv is over the limit of {limits.max_upload_bytes} bytes")
        try:
            csv = predictor.submission(data, rerank=rerank, max_questions=limits.max_upload_questions)
        except (DataError, ValueError) as err:
            raise HTTPException(422, str(err)) from None
        return Response(
            csv, media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="submission.csv"'}
        )

    @app.post("/labels", dependencies=auth, response_model=LabelOut, status_code=201)
    def add_label(body: LabelRequest) -> dict:
        """Record that ``misconception_id`` is the misconception behind the item's wrong answer."""
        if body.misconception_id not in predictor.names:
            raise HTTPException(422, f"misconception_id {body.misconception_id} is not in the run's misconceptions")
        question = body.question()
        try:
            reranked = predictor.resolve_rerank(body.rerank)
            found = predictor.locate(question, body.wrong_answer, body.misconception_id, rerank=reranked)
            return store.add(
                Label(
                    question=question,
                    wrong_answer=body.wrong_answer,
                    misconception_id=body.misconception_id,
                    misconception_name=predictor.names[body.misconception_id],
                    labeller=body.labeller,
                    model_rank=found.rank if found else None,
                    retriever_score=found.retriever_score if found else None,
                    reranker_score=found.reranker_score if found else None,
                    reranked=reranked,
                    question_id=body.question_id,
                )
            )
        except LabelError as err:
            raise HTTPException(409 if "QuestionId" in str(err) else 422, str(err)) from None
        except ValueError as err:
            raise HTTPException(422, str(err)) from None

    @app.get("/labels", dependencies=auth, response_model=list[LabelOut])
    def list_labels(limit: int = Query(50, ge=1, le=1000)) -> list[dict]:
        """The latest labels, newest first."""
        return store.labels(limit)

    @app.get(
        "/labels.csv",
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {"text/csv": {}}, "description": "train.csv rows"}},
    )
    def export_labels():
        """Every labelled question as a Kaggle ``train.csv`` row (the latest label of each wrong answer wins)."""
        return Response(
            store.export_csv(),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="train.csv"'},
        )

    return app
