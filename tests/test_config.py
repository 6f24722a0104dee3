"""Composition onto typed dataclasses: overrides apply, bad keys and values fail early and clearly."""

from dataclasses import dataclass, field

import pytest

from roboflamingo.config import ConfigError, compose, load, load_yaml, save_yaml, to_dataclass


@dataclass
class Inner:
    width: int = 8
    kind: str = "a"

    def __post_init__(self):
        if self.width <= 0:
            raise ValueError(f"inner.width must be > 0, got {self.width}")


@dataclass
class Job:
    inner: Inner = field(default_factory=Inner)
    name: str = "job"


@pytest.fixture
def config_root(tmp_path, monkeypatch):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "small.yaml").write_text("width: 4\nkind: small\n")
    (tmp_path / "inner" / "big.yaml").write_text("width: 64\nkind: big\n")
    (tmp_path / "job.yaml").write_text("defaults:\n  - inner: small\n  - _self_\nname: test\n")
    monkeypatch.setenv("ROBOFLAMINGO_CONFIG_DIR", str(tmp_path))
    return tmp_path


def test_group_and_key_overrides(config_root):
    job = load("job", Job, ["inner=big", "name=other"])
    assert isinstance(job.inner, Inner)
    assert (job.inner.width, job.inner.kind, job.name) == (64, "big", "other")
    assert load("job", Job, ["inner.width=5"]).inner.width == 5


def test_unknown_key_is_named(config_root):
    with pytest.raises(ConfigError, match="widht"):
        load("job", Job, ["+inner.widht=3"])


def test_wrong_type_is_named(config_root):
    with pytest.raises(ConfigError, match="width"):
        load("job", Job, ["inner.width=wide"])


def test_post_init_validation_is_reported(config_root):
    with pytest.raises(ConfigError, match="inner.width must be > 0"):
        load("job", Job, ["inner.width=-1"])


def test_unknown_group_option(config_root):
    with pytest.raises(ConfigError, match="inner"):
        compose("job", ["inner=huge"])


def test_save_and_reload_round_trip(config_root, tmp_path):
    job = load("job", Job, ["inner=big"])
    save_yaml(job, tmp_path / "out" / "config.yaml")
    assert load_yaml(tmp_path / "out" / "config.yaml", Job) == job


def test_load_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_yaml(tmp_path / "missing.yaml", Job)
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(bad, Job)


def test_to_dataclass_from_plain_dict():
    assert to_dataclass({"inner": {"width": 2}}, Job).inner.width == 2
