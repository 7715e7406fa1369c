from pathlib import Path

import pytest

from eedi.config import load_config
from eedi.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.folds.n_splits >= 2


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


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["folds.use"])


def test_query_template_fields_checked():
    with pytest.raises(ConfigError, match="Nonsense"):
        load_config(None, ["data.query_template={Nonsense}"])
