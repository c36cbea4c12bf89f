"""Every config group composes; bad values fail before any work, naming the key and the value."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from sweeplab.config import (
    CONF_DIR,
    AdamConfig,
    ConfigError,
    RegressionDataConfig,
    SGDConfig,
    SyntheticDataConfig,
    to_config,
    to_flat_dict,
    to_yaml,
)

from .conftest import compose_raw


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["data", "model", "optimizer", "trainer", "tracking", "experiment"]
)
def test_every_option_of_every_group_composes(group):
    assert options(group), f"conf/{group} has no options"
    needs = {"idx": ["data.root=/some/folder"]}  # mandatory keys of an option
    for option in options(group):
        cfg = to_config(compose_raw(f"{group}={option}", *needs.get(option, [])))
        if group in ("data", "optimizer"):
            assert getattr(cfg, group).name == option


def test_defaults_are_the_lecture_task():
    cfg = to_config(compose_raw())
    assert isinstance(cfg.data, SyntheticDataConfig)
    assert isinstance(cfg.optimizer, AdamConfig)
    assert (cfg.model.d_hidden, cfg.model.activation) == (4, "sigmoid")


def test_group_choice_gives_its_typed_schema():
    cfg = to_config(compose_raw("optimizer=sgd", "optimizer.nesterov=true", "data=regression"))
    assert isinstance(cfg.optimizer, SGDConfig) and cfg.optimizer.nesterov
    assert isinstance(cfg.data, RegressionDataConfig) and cfg.data.n_outputs == 2


@pytest.mark.parametrize("name", ["lecture_synthetic", "seed_synthetic"])  # and its old name
def test_lecture_experiment_holds_the_lecture_settings(name):
    cfg = to_config(compose_raw(f"experiment={name}"))
    assert (cfg.model.d_hidden, cfg.optimizer.lr, cfg.trainer.batch_size) == (4, 0.01, 100)
    assert cfg.trainer.epochs == 2000


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.d_hidden=0", "model.d_hidden=0"),
        ("optimizer.lr=-1", "optimizer.lr=-1"),
        ("optimizer.lr=0", "optimizer.lr=0"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1"),
        ("trainer.batch_size=0", "trainer.batch_size=0"),
        ("trainer.epochs=0", "trainer.epochs=0"),
        ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1"),
        ("model.activation=swish", "model.activation='swish'"),
        ("trainer.device=tpu", "trainer.device='tpu'"),
        ("data.n_train=0", "data.n_train=0"),
        ("data.noise=0.7", "data.noise=0.7"),
    ],
)
def test_bad_values_fail_naming_key_and_value(override, key):
    with pytest.raises(ConfigError) as err:
        to_config(compose_raw(override))
    assert str(err.value).startswith(key)


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(ConfigError, match="optimizer.nesterov"):
        to_config(compose_raw("optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"))


def test_unknown_key_fails_at_compose_time_naming_it():
    with pytest.raises(ConfigCompositionException) as err:
        compose_raw("model.d_hiden=3")
    assert "d_hiden" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_fails_at_compose_time_naming_it():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_raw("model.d_hidden=wide")
    assert "d_hidden" in str(err.value) + str(err.value.__cause__)


def test_unknown_group_option_fails():
    with pytest.raises(ConfigCompositionException, match="adamax"):
        compose_raw("optimizer=adamax")


def test_mandatory_value_left_unset_is_named():
    raw = compose_raw()
    raw.data.name = "synthetic"
    with pytest.raises(ConfigError, match="optimizer.name"):
        to_config({**_container(raw), "optimizer": {"lr": 0.1}})


def _container(raw):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(raw)


def test_yaml_round_trip_gives_the_same_config():
    cfg = to_config(compose_raw("optimizer=rmsprop", "model.d_hidden=7"))
    import yaml

    again = to_config(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


def test_unknown_key_in_a_loaded_yaml_is_named():
    cfg = to_config(compose_raw())
    import yaml

    loaded = yaml.safe_load(to_yaml(cfg))
    loaded["model"]["width"] = 3
    with pytest.raises(ConfigError, match="width"):
        to_config(loaded)


def test_flat_dict_has_dotted_keys():
    flat = to_flat_dict(to_config(compose_raw("optimizer=sgd")))
    assert flat["model.d_hidden"] == 4
    assert flat["optimizer.name"] == "sgd"
    assert flat["optimizer.momentum"] == 0.9


def test_appending_an_unknown_key_is_refused_by_the_schema():
    # Hydra's hint "use +trainer.speed=3" must not be a way around the schema
    with pytest.raises(ConfigError, match="speed"):
        to_config(compose_raw("+trainer.speed=3"))


def test_output_folder_is_the_projects_whatever_the_working_directory(tmp_path, monkeypatch):
    from sweeplab.config import PROJECT_ROOT, output_dir

    monkeypatch.delenv("SWEEPLAB_OUTPUT")
    monkeypatch.chdir(tmp_path)
    assert output_dir() == (PROJECT_ROOT / "outputs").resolve()
    monkeypatch.setenv("SWEEPLAB_OUTPUT", str(tmp_path / "elsewhere"))
    assert output_dir() == tmp_path / "elsewhere"
