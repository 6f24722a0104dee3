"""Composition onto typed dataclasses: overrides apply, bad keys and values fail early and clearly."""

from dataclasses import dataclass, field

import pytest

from roboflamingo.config import (
    ConfigError,
    Group,
    command_groups,
    compose,
    doc_problems,
    field_docs,
    load,
    load_yaml,
    save_yaml,
    schema_keys,
    schema_sections,
    summary,
    to_dataclass,
)


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


# ------------------------------------------------------------------ schema introspection, typo suggestions


@dataclass
class Documented:
    """One line of summary,
    continued here.

    Args:
        alpha: the first field; its text runs on
            over a second line, which reads ``beta: not an entry`` at its start:
            beta: still alpha's.
        beta, gamma: shared by two fields.
        delta: one sentence. epsilon: not an entry of its own (one entry per line).
        zeta:
            the text may start on the next line.
        stale: documents no field.
        not an entry
    More prose after the section, not part of it: eta: nothing.
    """

    alpha: int = 1
    beta: str = "b"
    gamma: float = 0.5
    delta: bool = False
    epsilon: list[int] = field(default_factory=lambda: [1, 2])
    zeta: str = ""
    eta: int = 0
    inner: Inner = field(default_factory=Inner)


@dataclass
class Derived(Documented):
    """A subclass rewords one inherited field and documents its own.

    Args:
        beta: reworded here.
        extra: the subclass's own field.
    """

    extra: int = 0


def test_field_docs_read_each_args_entry_and_its_continuations():
    docs = field_docs(Documented)
    assert docs["alpha"] == ("the first field; its text runs on over a second line, which reads ``beta: not an "
                             "entry`` at its start: beta: still alpha's.")
    assert docs["beta"] == docs["gamma"] == "shared by two fields."
    assert docs["delta"] == "one sentence. epsilon: not an entry of its own (one entry per line)."
    assert docs["zeta"] == "the text may start on the next line."
    assert "epsilon" not in docs and "eta" not in docs
    assert summary(Documented) == "One line of summary, continued here."
    derived = field_docs(Derived)
    assert derived["beta"] == "reworded here." and derived["gamma"] == "shared by two fields."
    assert derived["extra"] == "the subclass's own field." and derived["alpha"] == docs["alpha"]


def test_doc_problems_name_each_gap_and_where_to_write_it():
    problems = doc_problems(Documented)
    here = "tests/test_config.py"
    by_key = {k: [p for p in problems if f"'{k}'" in p] for k in ("epsilon", "eta", "inner", "stale", "inner.width")}
    for key in ("epsilon", "eta"):
        (msg,) = by_key[key]
        assert f"key '{key}' has no help sentence: add `{key}: " in msg
        assert f"under Args: in the docstring of {here}:" in msg and "(Documented)" in msg
    (msg,) = by_key["inner.width"]
    assert "(Inner)" in msg  # the class that declares it, not the one that nests it
    (msg,) = by_key["inner"]
    assert "section 'inner' (Inner) has no description" in msg and "`inner: <sentence>`" in msg
    (msg,) = by_key["stale"]
    assert "documents 'stale', which is not a field of Documented" in msg
    assert any("the Args: line 'not an entry'" in p for p in problems)
    # a field inherited from a documented base is documented; one declared in the subclass is found there
    assert not [p for p in doc_problems(Derived) if "'beta'" in p or "'extra'" in p]


def test_a_dataclass_without_a_docstring_has_no_summary():
    # dataclass() fills __doc__ with the constructor's signature: that is no help text
    assert summary(Inner) == "" and field_docs(Inner) == {}
    assert Inner.__doc__.startswith("Inner(")


def test_schema_keys_flatten_nested_dataclasses_with_types_and_defaults():
    keys = {k.path: k for k in schema_keys(Documented)}
    assert list(keys)[-2:] == ["inner.width", "inner.kind"]
    assert (keys["epsilon"].type, keys["epsilon"].default) == ("list[int]", [1, 2])
    assert (keys["inner.width"].type, keys["inner.width"].default) == ("int", 8)
    assert [p for p, _ in schema_sections(Documented)] == ["", "inner"]


def test_mistyped_keys_get_the_closest_valid_ones(config_root):
    with pytest.raises(ConfigError, match=r"unknown key 'nmae'; did you mean 'name'\?"):
        load("job", Job, ["nmae=x"])
    with pytest.raises(ConfigError, match=r"unknown key 'inner\.widht'; did you mean 'inner\.width'\?"):
        load("job", Job, ["inner.widht=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'inenr' \(in 'inenr\.width'\); did you mean 'inner'\?"):
        load("job", Job, ["inenr.width=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'widht'; did you mean 'inner\.width'\?"):
        load("job", Job, ["widht=3"])  # the right name without its parent
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'; valid keys at the top level: inner, name"):
        load("job", Job, ["~zzz"])
    with pytest.raises(ConfigError, match="job.yaml.*no key"):
        load("job", Job, ["=3"])


def test_a_saved_config_with_a_typo_gets_the_suggestion(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("inner:\n  widht: 3\nname: x\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: unknown key 'inner\.widht'; did you mean 'inner\.width'\?"):
        load_yaml(path, Job)


def test_groups_of_a_command(config_root):
    (config_root / "extra").mkdir()
    (config_root / "extra" / "renamed.yaml").write_text("# @package _global_\nname: from_extra\n")
    (config_root / "other").mkdir()  # a _global_ group setting keys Job lacks does not apply to it
    (config_root / "other" / "x.yaml").write_text("# @package _global_\nsteps: 3\n")
    groups = {g.name: g for g in command_groups("job", Job)}
    assert groups["inner"] == Group("inner", ("big", "small"), "small")
    assert groups["extra"] == Group("extra", ("renamed",), None)
    assert "other" not in groups
    assert load("job", Job, ["+extra=renamed"]).name == "from_extra"


def test_load_without_a_config_file_uses_the_schema_defaults():
    assert load(None, Job, []) == Job()
    assert load(None, Job, ["inner.width=3"]).inner.width == 3
    with pytest.raises(ConfigError, match="did you mean 'name'"):
        load(None, Job, ["nmae=x"])
