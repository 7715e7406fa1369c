"""What each config key affects: declared once beside the key, and every reuse decision derived from it.

A stage re-runs when a key it reads changes (and then the stages downstream of it); a trained model is retrained
only when a key declared ``trains=True`` for its stage changes, or its training files do. These tests change
every key in turn and check that exactly the declared stages and models would re-run, and that
``eedi run --dry-run`` says so, naming the key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, Field

from eedi.cli import main
from eedi.config import MODEL_STAGES, Config, Section, _effects, affects, key_effects, load_config, trained_values
from eedi.errors import ConfigError
from eedi.manifest import Manifest
from eedi.pipeline.dryrun import plan
from eedi.pipeline.registry import STAGES, get_stage, stage_fingerprint

REPO = Path(__file__).resolve().parents[1]
CPU = REPO / "configs" / "cpu.yaml"


def test_every_key_declares_what_it_affects():
    effects = key_effects()  # raises, naming the key, when one declares nothing
    names = {s.name for s in STAGES}
    assert len(effects) > 100
    for key, effect in effects.items():
        assert set(effect.stages) <= names, key
        assert not effect.trains or set(effect.stages) & set(MODEL_STAGES), f"{key}: trains=True without a model stage"


def test_a_key_without_a_declaration_is_named_with_the_fix():
    class NewSection(Section):
        declared: int = Field(1, json_schema_extra=affects("index"))
        unseen_share: float = 0.5

    with pytest.raises(ConfigError) as err:
        _effects(NewSection, "evaluation.", None)
    message = str(err.value)
    assert "config key evaluation.unseen_share (NewSection.unseen_share in src/eedi/config.py)" in message
    assert "json_schema_extra=affects(" in message and "trains=True" in message


def test_a_section_reused_under_two_keys_takes_each_holders_declaration():
    effects = key_effects()
    assert effects["retriever.lora.r"].stages == ("train-retriever",) and effects["retriever.lora.r"].trains
    assert effects["reranker.lora.r"].stages == ("train-reranker",) and effects["reranker.lora.layers"].trains


# --------------------------------------------------------------------------- every key, changed in turn


def _alternatives(value, annotation) -> list:
    """Valid-looking values different from ``value`` for a key of type ``annotation``, most likely first."""
    options = []
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return [a for a in args if a != value]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in args:
            if typing.get_origin(arg) is typing.Annotated:  # e.g. Annotated[int, Field(ge=1)] | Literal["auto"]
                arg = typing.get_args(arg)[0]
            if arg is type(None):
                options.append(None)
            elif typing.get_origin(arg) is typing.Literal:
                options += list(typing.get_args(arg))
            elif isinstance(value, arg):
                options += _alternatives(value, arg)
            else:
                options += {int: [1, 0], float: [1.0], str: ["x"], bool: [True, False]}.get(arg, [])
        return [o for o in options if o != value]
    if annotation is bool:
        return [not value]
    if annotation is int:
        return [value + 1, value * 2, value - 1, 1, 2]
    if annotation is float:
        return [value / 2, value * 0.9 + 0.01, 0.5, 0.1]
    if annotation is str:
        return [value + " changed"]
    if annotation is Path:
        return [Path(value) / "elsewhere"]
    if typing.get_origin(annotation) is tuple:
        return [(value[0], value[1] + 1), (value[0] + 1, value[1] + 1)]
    if typing.get_origin(annotation) is list:
        (item,) = args
        if typing.get_origin(item) is typing.Literal:
            return [[x] for x in typing.get_args(item) if [x] != value]
        if item is int:
            return [[*value, max(value) + 1] if value else [0]]
        return [[*value, "x"], value[:-1]]
    raise AssertionError(f"no alternative value for type {annotation}")


def _field(key: str):
    model: type[BaseModel] = Config
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name]


def _cross_field_changes(tmp_path: Path) -> dict[str, list[str]]:
    """Keys whose valid values depend on other keys or files, changed the way a user would change them."""
    deepspeed = tmp_path / "zero3.json"
    deepspeed.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    return {
        "reranker.fsdp": ["reranker.fsdp=full_shard auto_wrap"],
        "reranker.fsdp_config": [
            "reranker.fsdp=full_shard auto_wrap",
            "reranker.fsdp_config={transformer_layer_cls_to_wrap: [Qwen2DecoderLayer]}",
        ],
        "reranker.deepspeed": [f"reranker.deepspeed={deepspeed}"],
        # The feature reranker has no language model to quantize (quantize.enabled declares only quantize).
        "reranker.kind": ["reranker.kind=features", "quantize.enabled=false"],
    }


def _changed(base: list[str], key: str, tmp_path: Path | None = None) -> Config:
    if tmp_path is not None and key in (special := _cross_field_changes(tmp_path)):
        return load_config(CPU, [*base, *special[key]])
    cfg = load_config(CPU, base)
    value = cfg.model_dump()
    for part in key.split("."):
        value = value[part]
    field = _field(key)
    for alternative in _alternatives(value, field.annotation):
        if alternative == value:
            continue
        text = yaml.safe_dump(alternative if not isinstance(alternative, Path) else str(alternative)).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        try:
            return load_config(CPU, [*base, f"{key}={text}"])
        except ConfigError:
            continue
    raise AssertionError(f"found no valid value for {key} other than {value!r}")


def _downstream(stages: set[str]) -> set[str]:
    found = set(stages)
    for stage in STAGES:  # in pipeline order, so one pass closes the set
        if set(stage.upstream) & found:
            found.add(stage.name)
    return found


def _fingerprints(cfg: Config) -> dict[str, str]:
    prints: dict[str, str] = {}
    for stage in STAGES:
        prints[stage.name] = stage_fingerprint(cfg, stage, {u: prints[u] for u in stage.upstream})
    return prints


# Both folds in use, so that a key that names a fold (quantize.source) has another valid value.
BASE = ["run_dir=/tmp/eedi-affects", "folds.use=[0,1]"]


@pytest.mark.parametrize("key", sorted(key_effects()))
def test_changing_a_key_reruns_exactly_its_declared_stages_and_models(key, tmp_path):
    """Every key: its declared stages and everything downstream of them get a new fingerprint, no other stage
    does; a model stage's trained-model fingerprint changes exactly when the key is declared trains=True."""
    effect = key_effects()[key]
    base, changed = load_config(CPU, BASE), _changed(BASE, key, tmp_path)
    before, after = _fingerprints(base), _fingerprints(changed)
    rerun = {name for name in before if before[name] != after[name]}
    assert rerun == _downstream(set(effect.stages)), key
    for stage in MODEL_STAGES:
        retrained = trained_values(base, stage) != trained_values(changed, stage)
        assert retrained == effect.retrains(stage), (key, stage)


def test_scoring_keys_rescore_without_retraining_and_training_keys_retrain():
    """The reranker keys that used to be listed by hand (rerank/schemes.py SCORING_KEYS) now follow from the
    declarations, with the same split."""
    effects = key_effects()
    scoring = {k.split(".", 1)[1] for k, e in effects.items() if k.startswith("reranker.") and not e.trains}
    assert {"scheme", "stride", "advance", "fusion_weight", "tta_reverse", "backend", "score_batch_size"} <= scoring
    assert {"tensor_parallel_size"} <= scoring
    for key in ("lr", "window_size", "max_length", "depth", "lora.r", "epochs", "backbone"):
        assert effects[f"reranker.{key}"].retrains("train-reranker"), key


# --------------------------------------------------------------------------- eedi run --dry-run


def _record_done(cfg: Config) -> None:
    """Record every stage as finished under ``cfg``, as run_stage does (fingerprint and the keys it was made of),
    with no outputs to check: the dry run reads the manifest only."""
    from eedi.config import config_to_dict, stage_values
    from eedi.manifest import input_hashes

    manifest = Manifest(cfg.run_dir)
    manifest.record_run(config_to_dict(cfg), input_hashes(Path(cfg.data.dir)))
    prints = _fingerprints(cfg)
    for stage in STAGES:
        t0 = manifest.start(stage.name, prints[stage.name], stage_values(cfg, stage.name))
        manifest.finish(stage.name, t0, [], {})


# One key of each section, with the stages a change of it re-runs and the reason the first of them gives.
ONE_KEY_PER_SECTION = {
    "seed=7": ("train-retriever", "seed changed (42 -> 7)"),
    "data.query_template='{QuestionText}'": ("prepare", "data.query_template changed"),
    "folds.seed=7": ("prepare", "folds.seed changed (42 -> 7)"),
    "runtime.dtype=bfloat16": ("synthesize", "runtime.dtype changed (float32 -> bfloat16)"),
    "synthetic.budget=99": ("synthesize", "synthetic.budget changed"),
    "retriever.lr=0.5": ("train-retriever", "retriever.lr changed"),
    "index.top_k=7": ("index", "index.top_k changed (100 -> 7)"),
    "reranker.lr=0.5": ("train-reranker", "reranker.lr changed"),
    "reranker.fusion_weight=0.25": ("train-reranker", "reranker.fusion_weight changed"),
    "quantize.group_size=64": ("quantize", "quantize.group_size changed (32 -> 64)"),
    "infer.backend=vllm": ("infer", "infer.backend changed (transformers -> vllm)"),
    "tracking.experiment=other": (None, None),  # changes no output: nothing runs
}


@pytest.mark.parametrize("override", sorted(ONE_KEY_PER_SECTION))
def test_dry_run_names_the_changed_key_and_the_stages_it_reruns(override, tmp_path):
    base = [f"run_dir={tmp_path / 'run'}"]
    _record_done(load_config(CPU, base))
    assert not any(p.runs for p in plan(load_config(CPU, base)))
    changed = load_config(CPU, [*base, override])
    plans = {p.name: p for p in plan(changed)}
    key = override.split("=")[0]
    first, reason = ONE_KEY_PER_SECTION[override]
    expected = _downstream(set(key_effects()[key].stages))
    assert {name for name, p in plans.items() if p.runs} == expected
    assert first is None or any(r.startswith(reason) for r in plans[first].reasons), plans[first].reasons
    effect = key_effects()[key]
    for stage in set(MODEL_STAGES) & expected:
        models = plans[stage].models
        if effect.retrains(stage):
            assert models.startswith("retrains its models") and key in models
        elif stage in effect.stages:
            assert models.startswith("reuses its models"), models
        else:
            assert models.startswith("retrains a model only where its training files change"), models


def test_dry_run_on_the_command_line(tmp_path, capsys):
    base = ["--config", str(CPU), f"run_dir={tmp_path / 'run'}"]
    _record_done(load_config(CPU, base[2:]))
    assert main(["run", "--dry-run", *base, "reranker.fusion_weight=0.25"]) == 0
    out = capsys.readouterr().out
    assert "4 of 8 stages would run" in out
    assert "train-retriever  current: skipped" in out
    assert "train-reranker   runs: reranker.fusion_weight changed (0.5 -> 0.25)" in out
    assert "reuses its models (only how they are used changed)" in out
    assert not (tmp_path / "run" / "logs").exists()  # nothing ran


def test_dry_run_after_a_real_stage(tmp_path, sample_dir):
    """The manifest a real stage run leaves: unchanged config, nothing to run; a changed key, named."""
    run = [sys.executable, "-m", "eedi"]
    args = ["--config", str(CPU), f"run_dir={tmp_path / 'run'}", f"data.dir={sample_dir}"]
    subprocess.run([*run, "prepare", *args], check=True, cwd=REPO, capture_output=True)
    keys = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["prepare"]["keys"]
    assert keys["folds.seed"] == 42 and "retriever.lr" not in keys
    dry = subprocess.run(
        [*run, "run", "--dry-run", "--stages", "prepare", *args, "folds.n_splits=3"],
        check=True,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert "prepare  runs: folds.n_splits changed (5 -> 3)" in dry.stdout


def test_stage_fingerprint_reads_only_declared_keys():
    cfg = load_config(CPU, BASE)
    index = get_stage("index")
    upstream = {u: "x" for u in index.upstream}
    assert stage_fingerprint(cfg, index, upstream) == stage_fingerprint(
        load_config(CPU, [*BASE, "reranker.lr=0.5", "tracking.experiment=other", "run_dir=/elsewhere"]),
        index,
        upstream,
    )


# --------------------------------------------------------------------------- end to end, on real stages

QWEN_MODULES = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"


@pytest.fixture
def tiny_run(tmp_path, sample_dir, tiny_qwen2_path):
    """prepare .. train-reranker on the first 120 questions of the sample, with the tiny random Qwen2 as retriever
    and reranker (a few steps each). Returns a function: overrides -> (config, {stage: started})."""
    import pandas as pd

    from eedi.pipeline.runner import run_stage

    data = tmp_path / "data"
    data.mkdir()
    pd.read_csv(sample_dir / "train.csv").head(120).to_csv(data / "train.csv", index=False)
    (data / "misconception_mapping.csv").write_bytes((sample_dir / "misconception_mapping.csv").read_bytes())
    base = [
        f"run_dir={tmp_path / 'run'}",
        f"data.dir={data}",
        "synthetic.enabled=false",
        "synthetic.use=false",
        f"retriever.backbone={tiny_qwen2_path}",
        f"retriever.lora.target_modules={QWEN_MODULES}",
        "retriever.top_layers=null",
        "retriever.max_steps=2",
        "retriever.batch_size=8",
        "retriever.max_length=64",
        "retriever.n_hard_negatives=2",
        "retriever.n_random_negatives=4",
        "retriever.hard_negative_refresh_steps=2",
        "retriever.save_steps=2",
        f"reranker.backbone={tiny_qwen2_path}",
        f"reranker.lora.target_modules={QWEN_MODULES}",
        "reranker.lora.layers=null",
        "reranker.window_size=4",
        "reranker.depth=4",
        "reranker.stride=4",
        "reranker.batch_size=4",
        "reranker.max_train_windows=8",
        "reranker.max_length=256",
    ]

    def run(*overrides: str):
        cfg = load_config(CPU, [*base, *overrides])
        predicted = {p.name for p in plan(cfg, STAGE_SUBSET) if p.runs}
        before = {s: Manifest(cfg.run_dir).stage(s).get("started") for s in STAGE_SUBSET}
        for stage in STAGE_SUBSET:
            run_stage(cfg, stage)
        after = {s: Manifest(cfg.run_dir).stage(s).get("started") for s in STAGE_SUBSET}
        ran = {s for s in STAGE_SUBSET if before[s] != after[s]}
        assert ran == predicted, (overrides, ran, predicted)  # the dry run told the truth
        return cfg, ran

    return run


STAGE_SUBSET = ["prepare", "train-retriever", "index", "train-reranker"]


def _model_state(run_dir: Path, stage_dir: str) -> tuple[str, float]:
    """A fold-0 model's training fingerprint and its weights' modification time (unchanged: not retrained)."""
    fold = Path(run_dir) / stage_dir / "fold_0"
    weights = next(p for p in sorted(fold.rglob("*.safetensors")) if "adapter" not in p.parts)
    return json.loads((fold / "train_info.json").read_text())["fingerprint"], weights.stat().st_mtime_ns


@pytest.mark.slow
def test_changed_keys_rerun_exactly_the_declared_stages_and_models(tiny_run):
    cfg, ran = tiny_run()
    assert ran == set(STAGE_SUBSET)
    retriever, reranker = _model_state(cfg.run_dir, "retriever"), _model_state(cfg.run_dir, "reranker")

    # how the reranker scores: the stage re-runs, its model is reused
    cfg, ran = tiny_run("reranker.fusion_weight=0.25")
    assert ran == {"train-reranker"}
    assert _model_state(cfg.run_dir, "reranker") == reranker

    # what the reranker trains: the stage re-runs and retrains, the retriever stays
    cfg, ran = tiny_run("reranker.fusion_weight=0.25", "reranker.lr=0.002")
    assert ran == {"train-reranker"}
    assert _model_state(cfg.run_dir, "reranker")[0] != reranker[0]
    assert _model_state(cfg.run_dir, "retriever") == retriever

    # an index key: index and the stages after it re-run, the retriever is reused
    cfg, ran = tiny_run("reranker.fusion_weight=0.25", "reranker.lr=0.002", "index.top_k=50")
    assert ran == {"index", "train-reranker"}
    assert _model_state(cfg.run_dir, "retriever") == retriever

    # a key that changes no output: nothing runs
    _, ran = tiny_run("reranker.fusion_weight=0.25", "reranker.lr=0.002", "index.top_k=50", "tracking.experiment=x")
    assert ran == set()
