from pathlib import Path

import pytest

from eedi.cli import main
from eedi.config import load_config
from eedi.errors import ConfigError
from eedi.pipeline.registry import SIDES, STAGES, check_sides

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_run_on_their_sides(name):
    """Every engine key of every shipped config names an engine its stage's side has (the training side has no
    vLLM), so no shipped config fails in a stage after hours of work upstream."""
    cfg = load_config(REPO / "configs" / name)
    check_sides(cfg)
    engines = {key: stage for stage in STAGES for key in stage.engines}
    assert set(engines) == {"reranker.backend", "quantize.backend", "infer.backend"}
    for key, stage in engines.items():
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) in SIDES[stage.side].engines, (name, key)


@pytest.mark.parametrize(
    ("override", "stage"), [("reranker.backend=vllm", "train-reranker"), ("quantize.backend=vllm", "quantize")]
)
def test_an_engine_its_side_lacks_is_one_error_naming_the_key(override, stage, tmp_path, capsys):
    key = override.split("=")[0]
    expected = f"error: {key}: vllm cannot run in stage {stage} (train side has no vLLM"
    for argv in ([stage], ["run"]):
        run_dir = tmp_path / argv[0]
        assert main([*argv, "--config", str(REPO / "configs" / "cpu.yaml"), f"run_dir={run_dir}", override]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
        assert not run_dir.exists()  # rejected before any stage started
    check_sides(load_config(REPO / "configs" / "cpu.yaml", ["infer.backend=vllm"]))  # the infer side has vLLM


def test_the_sides_match_the_makefile():
    makefile = (REPO / "Makefile").read_text()
    assert f"TRAIN := {SIDES['train'].environment}" in makefile
    assert f"INFER := {SIDES['infer'].environment}" in makefile


def test_overrides_are_typed():
    cfg = load_config(REPO / "configs" / "cpu.yaml", ["folds.use=[0,2]", "seed=7", "run_dir=/tmp/x"])
    assert cfg.folds.use == [0, 2] and cfg.seed == 7 and str(cfg.run_dir) == "/tmp/x"


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("folds:\n  n_split: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'folds.n_split'"):
        load_config(bad)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"key 'folds.n_splits'"):
        load_config(None, ["folds.n_splits=many"])


def test_fold_out_of_range():
    with pytest.raises(ConfigError, match=r"folds.*outside 0..4"):
        load_config(None, ["folds.use=[7]"])


def test_a_check_across_keys_names_them_without_dumping_the_config():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["retriever.save_steps=30", "retriever.hard_negative_refresh_steps=20"])
    assert str(err.value).count("\n") == 0
    assert "section 'retriever'" in str(err.value) and "save_steps=30" in str(err.value)
    assert "backbone" not in str(err.value)  # the section's other keys stay out of the message


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["folds.use"])


def test_query_template_fields_checked():
    with pytest.raises(ConfigError, match="Nonsense"):
        load_config(None, ["data.query_template={Nonsense}"])
