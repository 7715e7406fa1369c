"""The one validated config that drives every stage.

A run is described by a single YAML file (``configs/*.yaml``) plus ``key=value``
overrides from the command line. Everything is validated by pydantic at load time:
an unknown key, a wrong type or a missing path fails before any work starts, with
one error naming the key.

Each stage reads only its own section (``data``, ``folds``, ``retriever`` …); the
resolved config is written into the run manifest so a run can be reproduced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is invalid. The message names the key."""


class Section(BaseModel):
    # extra="forbid": a typo in a key is an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


DEFAULT_QUERY_TEMPLATE = (
    "Construct: {ConstructName}\n"
    "Subject: {SubjectName}\n"
    "Question: {QuestionText}\n"
    "Correct answer: {CorrectAnswerText}\n"
    "Incorrect answer: {WrongAnswerText}"
)


class DataConfig(Section):
    dir: Path = Path("data/sample")
    """Folder with the Kaggle CSVs: train.csv, misconception_mapping.csv, optionally test.csv and sample_submission.csv."""
    query_template: str = DEFAULT_QUERY_TEMPLATE
    """Python format string for the query text; fields are the pairs.parquet columns."""

    @field_validator("query_template")
    @classmethod
    def _template_fields_exist(cls, template: str) -> str:
        from string import Formatter

        allowed = {
            "QuestionId", "ConstructId", "ConstructName", "SubjectId", "SubjectName", "QuestionText",
            "CorrectAnswer", "CorrectAnswerText", "WrongAnswer", "WrongAnswerText",
        }
        used = {name for _, name, _, _ in Formatter().parse(template) if name}
        unknown = sorted(used - allowed)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} in query_template; allowed: {sorted(allowed)}")
        return template


class FoldsConfig(Section):
    n_splits: int = Field(5, ge=2)
    seed: int = 42
    mode: Literal["group", "unseen"] = "group"
    """group: GroupKFold by QuestionId over shuffled groups. unseen: additionally holds out whole
    misconceptions per fold, so validation is rich in misconceptions never seen in training (like the test set)."""
    unseen_share: float = Field(0.3, ge=0.0, le=1.0)
    """mode=unseen: share of each fold's misconceptions held out of that fold's training part."""
    use: list[int] = Field(default_factory=lambda: [0])
    """Folds to train and evaluate on."""
    full_fit: bool = False
    """Also train one model on all labelled rows (for the submission)."""

    @model_validator(mode="after")
    def _use_in_range(self) -> "FoldsConfig":
        bad = [f for f in self.use if not 0 <= f < self.n_splits]
        if bad:
            raise ValueError(f"use={self.use}: fold(s) {bad} outside 0..{self.n_splits - 1}")
        return self


class RuntimeConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on CUDA, float32 on CPU (bf16 is several times slower on CPUs without AVX-512)."""
    num_threads: int | None = None
    """torch CPU threads; None leaves torch's default."""


class InferConfig(Section):
    """Stage 7 (infer): rerank the test pairs' candidates and write submission.csv."""

    reranker_model: Literal["auto", "merged", "gptq", "awq"] = "auto"
    """Which reranker weights to serve: auto = the first quantized one that exists (gptq, then awq)
    when the backend can run it, else the merged full-precision model."""
    backend: Literal["transformers", "vllm"] = "vllm"
    """vllm on CUDA (and on CPU for full-precision models); transformers anywhere."""


class Config(Section):
    """The whole run. Sections for stages are added by their modules' schemas below."""

    run_dir: Path = Path("runs/default")
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    folds: FoldsConfig = Field(default_factory=FoldsConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    infer: InferConfig = Field(default_factory=InferConfig)


# --------------------------------------------------------------------------- loading


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    # YAML parsing gives ints, floats, bools, lists ([0,1]) and null the way users expect.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {err}") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return raw


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif e["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        else:
            lines.append(f"{source}: key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply ``key=value`` overrides, validate. Raises ConfigError."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def config_to_dict(config: Config) -> dict:
    """JSON-safe dict of the resolved config (paths as strings)."""
    return config.model_dump(mode="json")


def require_dir(path: Path, what: str) -> Path:
    if not Path(path).is_dir():
        raise ConfigError(f"{what}: directory {path} does not exist")
    return Path(path)
