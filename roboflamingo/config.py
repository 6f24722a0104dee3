"""Hydra composition backed by typed dataclasses.

Every command has a primary YAML file in ``roboflamingo/configs/`` (``configs/<command>.yaml``) whose defaults list
pulls in the groups it needs (``model/``, ``head/``, ``data/``, ...). The composed tree is merged onto
the command's dataclass schema, so a misspelled key or a wrong type fails before any work starts, and
each dataclass validates its own values in ``__post_init__``. Configs are data: no ``_target_``
instantiation and no ``${eval:}``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from roboflamingo.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key and what was expected."""


def config_dir() -> Path:
    """The Hydra search root: ``$ROBOFLAMINGO_CONFIG_DIR`` or the package's ``roboflamingo/configs/``."""
    from roboflamingo.resources import CONFIGS, package_data_dir

    path = package_data_dir(CONFIGS, "ROBOFLAMINGO_CONFIG_DIR")
    if not path.is_dir():
        raise ConfigError(f"config directory {path} does not exist (set ROBOFLAMINGO_CONFIG_DIR)")
    return path


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` with command-line style overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        # Hydra appends its search path, which says nothing the user can act on
        message = str(e).split("\nConfig search path:")[0].strip()
        raise ConfigError(f"configs/{config_name}.yaml with overrides {overrides or []}: {message}") from e


def to_dataclass(cfg: DictConfig | dict, schema: type[T], source: str = "config") -> T:
    """Merge ``cfg`` onto ``schema`` (type-checked, no unknown keys) and build the dataclass."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        if isinstance(e, ConfigKeyError) and key and unknown_key(schema, key):
            raise ConfigError(f"{source}: {unknown_key_message(schema, key)}") from e
        where = f" at '{key}'" if key else ""
        raise ConfigError(f"{source}{where}: {e.msg if hasattr(e, 'msg') else e}") from e
    except (ValueError, TypeError) as e:  # raised by a dataclass's __post_init__
        raise ConfigError(f"{source}: {e}") from e


def load(config_name: str | None, schema: type[T], overrides: list[str] | None = None) -> T:
    """Compose and validate in one call: what every command does first.

    Override keys are checked against ``schema`` first, so a typo is reported as an unknown key with
    the closest valid ones, not as Hydra's advice to append it with ``+``. ``config_name=None``: the
    schema's own defaults, no YAML file (a command with nothing to compose).
    """
    overrides = list(overrides or [])
    source = f"configs/{config_name}.yaml" if config_name else "config"
    found = command_groups(config_name, schema)
    groups = tuple(g.name for g in found)
    check_group_options(found, overrides, source=source)
    check_override_keys(schema, overrides, groups=groups, source=source)
    if config_name is None:
        try:
            cfg = OmegaConf.from_dotlist([o.lstrip("+") for o in overrides])
        except OmegaConfBaseException as e:
            raise ConfigError(f"overrides {overrides}: {e}") from e
        return to_dataclass(cfg, schema, source=source)
    return to_dataclass(compose(config_name, schema_overrides(overrides, groups)), schema, source=source)


def schema_overrides(overrides: list[str], groups: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Key overrides as Hydra's override-or-add (``++key=value``).

    The YAML files carry only what differs from the dataclass defaults, so a key such as
    ``train.steps`` may be absent from the composed tree that Hydra checks overrides against; the
    schema is the authority (``check_override_keys`` has vetted every key), so each may be added.
    Group choices (``model=tiny``), explicit ``+``/``~`` and Hydra's own settings pass unchanged.
    """
    out = []
    for o in overrides:
        key = o.partition("=")[0]
        if (o.startswith(("+", "~")) or key in groups or "/" in key or "@" in key or key == "hydra"
                or key.startswith("hydra.")):
            out.append(o)
        else:
            out.append("++" + o)
    return out


# ------------------------------------------------------------------ schema introspection
# `--help`, the unknown-key check and the saved-config check all read the dataclasses themselves, so
# what they say cannot drift from what is validated.


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One settable key of a schema: its dotted path, annotated type, dataclass default and doc."""

    path: str
    type: str
    default: Any
    doc: str


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Each field with its resolved annotation (postponed annotations are strings)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation naming a type only imported under TYPE_CHECKING
        hints = {}
    return {f.name: (f, hints.get(f.name, f.type)) for f in dataclasses.fields(cls) if f.init}


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass an annotation holds (``X`` or ``X | None``), else None."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _own_doc(cls: type) -> str:
    """``cls``'s own docstring, cleaned; "" when it has none (``dataclass`` fills an empty one with the
    constructor's signature, which is no help text, and ``inspect.getdoc`` would inherit a base's)."""
    doc = cls.__dict__.get("__doc__") or ""
    if dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}("):
        return ""
    return inspect.cleandoc(doc)


# The one place a key's help lives: the ``Args:`` section of the docstring of the dataclass that
# declares the field (Google style). An entry is ``name: text`` (or ``a, b: text`` for fields sharing
# one sentence); lines indented deeper than the entry continue it. The section ends where the text
# returns to the header's indentation.
_ARGS_HEADER = "Args:"
_ENTRY = re.compile(r"([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*):(?:\s+(.*))?$")


def _parse_args(cls: type) -> tuple[list[tuple[list[str], str]], list[str]]:
    """The ``Args:`` section of ``cls``'s own docstring: ``(names, text)`` per entry, and the lines
    that are neither an entry nor indented under one (reported by ``doc_problems``, skipped here)."""
    lines = _own_doc(cls).splitlines()
    try:
        i = next(n for n, line in enumerate(lines) if line.strip() == _ARGS_HEADER)
    except StopIteration:
        return [], []
    header_indent = len(lines[i]) - len(lines[i].lstrip())
    entries: list[tuple[list[str], list[str]]] = []
    bad: list[str] = []
    entry_indent = None
    for line in lines[i + 1:]:
        text, depth = line.strip(), len(line) - len(line.lstrip())
        if not text:
            continue
        if depth <= header_indent:
            break
        if entry_indent is None:
            entry_indent = depth
        m = _ENTRY.match(text)
        if depth == entry_indent and m:
            entries.append(([k.strip() for k in m.group(1).split(",")], [m.group(2) or ""]))
        elif entries and depth > entry_indent:
            entries[-1][1].append(text)
        else:
            bad.append(text)
    return [(names, " ".join(t for t in parts if t)) for names, parts in entries], bad


def args_entries(cls: type) -> list[tuple[list[str], str]]:
    """``(names, text)`` for each entry of the ``Args:`` section of ``cls``'s own docstring, in order."""
    return _parse_args(cls)[0]


def _dataclass_mro(cls: type) -> list[type]:
    return [c for c in reversed(cls.__mro__) if dataclasses.is_dataclass(c)]


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the sentence(s) the ``Args:`` sections of ``cls`` and its dataclass bases give it.

    A subclass's entry wins over its base's, so a command's Job may reword an inherited field.
    """
    docs: dict[str, str] = {}
    for klass in _dataclass_mro(cls):
        for names, text in args_entries(klass):
            for name in names:
                docs[name] = text
    return docs


def summary(cls: type) -> str:
    """What a class's docstring says before its first paragraph break or ``Args:``, on one line."""
    out = []
    for line in _own_doc(cls).splitlines():
        text = line.strip()
        if not text or text == _ARGS_HEADER:
            break
        out.append(text)
    return " ".join(out)


def declared_in(cls: type, name: str) -> type:
    """The class in ``cls``'s MRO whose body declares field ``name``: where its ``Args:`` entry belongs."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return cls


def where(cls: type) -> str:
    """``path/to/file.py:line (ClassName)`` of a class, relative to the repository when inside it."""
    try:
        path = Path(inspect.getsourcefile(cls) or "?").resolve()
        line = inspect.getsourcelines(cls)[1]
    except (OSError, TypeError):
        return cls.__qualname__
    root = Path(__file__).resolve().parents[1]
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    return f"{shown}:{line} ({cls.__qualname__})"


def doc_problems(schema: type, prefix: str = "") -> list[str]:
    """Every documentation gap of ``schema``'s keys and sections, each saying where to write the fix.

    A key needs a non-empty ``Args:`` entry in the class declaring it; a nested section needs its
    class's summary line or an entry for its field in the parent; an entry naming no field is stale.
    """
    problems = []
    docs = field_docs(schema)
    fields = _fields(schema)
    for klass in _dataclass_mro(schema):
        own = set(_fields(klass))
        entries, bad = _parse_args(klass)
        for text in bad:
            problems.append(f"{where(klass)}: the Args: line '{text}' is neither `name: text` (or `a, b: text`) "
                            "nor indented under an entry as its continuation")
        for names, _ in entries:
            for name in names:
                if name not in own:
                    problems.append(f"{where(klass)}: its Args: section documents '{name}', which is not a "
                                    f"field of {klass.__qualname__} (renamed or removed?); update or delete it")
    for name, (_, annotation) in fields.items():
        path = prefix + name
        sub = _dataclass_of(annotation)
        home = declared_in(schema, name)
        if sub is not None:
            if not docs.get(name, "").strip() and not summary(sub):
                problems.append(f"section '{path}' ({sub.__qualname__}) has no description: give "
                                f"{where(sub)} a docstring whose first line says what it configures, or add "
                                f"`{name}: <sentence>` under Args: in {where(home)}")
            problems += doc_problems(sub, path + ".")
        elif not docs.get(name, "").strip():
            problems.append(f"key '{path}' has no help sentence: add `{name}: <what it does; its unit and what "
                            f"0 or empty means, where that applies>` under Args: in the docstring of {where(home)}")
    return list(dict.fromkeys(problems))  # a class nested at several paths is reported once


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "???"


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def schema_keys(schema: type, prefix: str = "") -> list[KeyInfo]:
    """Every leaf key of ``schema``, nested dataclasses flattened into dotted paths, in field order."""
    docs = field_docs(schema)
    keys: list[KeyInfo] = []
    for name, (f, annotation) in _fields(schema).items():
        sub = _dataclass_of(annotation)
        if sub is not None:
            keys += schema_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(KeyInfo(prefix + name, _type_name(f.type), _default(f), docs.get(name, "")))
    return keys


def schema_sections(schema: type, prefix: str = "") -> list[tuple[str, type]]:
    """``(dotted path, dataclass)`` for ``schema`` (path "") and every dataclass nested in it."""
    out = [(prefix.rstrip("."), schema)]
    for name, (_, annotation) in _fields(schema).items():
        sub = _dataclass_of(annotation)
        if sub is not None:
            out += schema_sections(sub, f"{prefix}{name}.")
    return out


def section_doc(schema: type, path: str) -> str:
    """What ``--help`` says of the nested section at dotted ``path``: its field's ``Args:`` entry in the
    parent (specific to this use: ``deploy.topics.estop``), else the section class's summary line."""
    parent, _, name = path.rpartition(".")
    cls = schema
    for part in parent.split(".") if parent else []:
        cls = _dataclass_of(_fields(cls)[part][1])  # type: ignore[assignment]
    sub = _dataclass_of(_fields(cls)[name][1])
    return field_docs(cls).get(name, "") or (summary(sub) if sub is not None else "")


def unknown_key(schema: type, key: str) -> str | None:
    """The first segment of dotted ``key`` that ``schema`` lacks (as a dotted prefix), or None.

    Below a field that is not a dataclass (a dict, a list, ``Any``) every key is accepted: those are
    free-form or checked by the merge.
    """
    cls: type | None = schema
    parts = key.split(".")
    for i, part in enumerate(parts):
        if cls is None:
            return None
        fields = _fields(cls)
        if part not in fields:
            return ".".join(parts[: i + 1])
        cls = _dataclass_of(fields[part][1])
    return None


def _quote_list(items: list[str]) -> str:
    quoted = [f"'{k}'" for k in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def unknown_key_message(schema: type, key: str, extra: tuple[str, ...] = ()) -> str:
    """``unknown key 'modle'; did you mean 'model'?``: the closest keys beside it, else anywhere.

    ``extra`` adds names valid at the top level that are not fields (config groups like ``experiment``).
    """
    bad = unknown_key(schema, key) or key
    parent, _, leaf = bad.rpartition(".")
    cls = schema
    for part in parent.split(".") if parent else []:
        cls = _dataclass_of(_fields(cls)[part][1])  # type: ignore[assignment]
    names = list(dict.fromkeys([*_fields(cls), *([] if parent else extra)]))  # groups are often fields too
    siblings = [f"{parent}.{n}" if parent else n for n in names]
    # leaf against leaf: a shared dotted prefix would make every sibling look close
    close = [f"{parent}.{n}" if parent else n for n in difflib.get_close_matches(leaf, names, n=3, cutoff=0.6)]
    if not close:
        # the right name under the wrong parent: `stpes=` for `train.steps=`
        everywhere = {k.path: k.path.rpartition(".")[2] for k in schema_keys(schema)}
        leaves = difflib.get_close_matches(leaf, sorted(set(everywhere.values())), n=3, cutoff=0.75)
        close = [path for path, name in everywhere.items() if name in leaves][:3]
    shown = f"'{key}'" if bad == key else f"'{bad}' (in '{key}')"
    if close:
        return f"unknown key {shown}; did you mean {_quote_list(close)}?"
    where = f"under '{parent}'" if parent else "at the top level"
    return f"unknown key {shown}; valid keys {where}: {', '.join(siblings)}"


@dataclasses.dataclass(frozen=True)
class Group:
    """A config group a command accepts: ``name=option`` (or ``+name=option`` without a default)."""

    name: str
    options: tuple[str, ...]
    default: str | None  # what the primary config's defaults list picks; None: not picked


def _defaults_list(path: Path) -> dict[str, str]:
    """``group -> option`` from a primary config's ``defaults:`` list (``_self_`` and the like dropped)."""
    import yaml

    try:
        entries = (yaml.safe_load(path.read_text()) or {}).get("defaults", []) or []
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise ConfigError(f"{path}: cannot read its defaults list ({e})") from e
    out = {}
    for entry in entries:
        if isinstance(entry, dict):
            for k, v in entry.items():
                group = str(k).split()[-1].split("@")[0]  # "optional x@pkg" -> "x"
                out[group] = str(v)
    return out


def _global_keys(option: Path) -> set[str] | None:
    """Top-level keys of a group option declared ``# @package _global_``, else None."""
    text = option.read_text()
    # Hydra reads the package header only above the first non-comment line
    header = [line.strip() for line in text.splitlines()[:5]]
    if "# @package _global_" not in header:
        return None
    data = OmegaConf.create(text)
    return set(data.keys()) if isinstance(data, DictConfig) else set()


def command_groups(config_name: str | None, schema: type) -> list[Group]:
    """The config groups ``configs/<config_name>.yaml`` can take: those its defaults list picks, those
    filling one of ``schema``'s dataclass fields, and ``_global_`` groups (``experiment``) whose options
    set only keys of ``schema``."""
    if config_name is None:
        return []
    root = config_dir()
    defaults = _defaults_list(root / f"{config_name}.yaml")
    sections = {name for name, (_, ann) in _fields(schema).items() if _dataclass_of(ann) is not None}
    groups = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        options = sorted(folder.glob("*.yaml"))
        name = str(folder.relative_to(root))
        if not options:
            continue
        applies = name in defaults or name in sections
        if not applies:
            keys = [_global_keys(o) for o in options]
            applies = all(k is not None and k <= set(_fields(schema)) for k in keys)
        if applies:
            groups.append(Group(name, tuple(o.stem for o in options), defaults.get(name)))
    return groups


def check_override_keys(schema: type, overrides: list[str], groups: tuple[str, ...] | list[str] = (),
                        source: str = "config") -> None:
    """Raise a ConfigError for an override whose key is neither a config group nor a key of ``schema``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"{source}: overrides {overrides}: {e}") from e
    for o in parsed:
        key = o.key_or_group
        # `group@package=`, `group/subgroup=` and hydra's own settings are Hydra's to check
        if o.package is not None or "/" in key or key == "hydra" or key.startswith("hydra.") or key in groups:
            continue
        if not key:
            raise ConfigError(f"{source}: override '{o.input_line}' has no key (expected key=value)")
        if unknown_key(schema, key):
            raise ConfigError(f"{source}: {unknown_key_message(schema, key, extra=tuple(groups))}")


def _close(word: str, choices: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """The choices closest to a mistyped ``word``, best first (case-insensitive)."""
    lowered = {c.lower(): c for c in choices}
    return [lowered[c] for c in difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.6)]


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """``"; did you mean 'tiny'?"`` for the closest choices, or "" when none is close."""
    close = _close(word, choices)
    return f"; did you mean {_quote_list(close)}?" if close else ""


def check_group_options(groups: list[Group], overrides: list[str], source: str = "config") -> None:
    """Raise a ConfigError for ``group=option`` naming an option the group lacks, with the closest
    ones and the full list (rather than Hydra's error and its search path)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    by_name = {g.name: g for g in groups}
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"{source}: overrides {overrides}: {e}") from e
    for o in parsed:
        group = by_name.get(o.key_or_group)
        if group is None or o.package is not None or o.is_delete():
            continue
        value = o.value()
        if isinstance(value, str) and value not in group.options:
            raise ConfigError(
                f"{source}: unknown option '{value}' for config group '{group.name}'{did_you_mean(value, group.options)} "
                f"(options: {', '.join(group.options)}; configs/{group.name}/<option>.yaml)"
            )


def load_yaml(path: str | os.PathLike, schema: type[T]) -> T:
    """Read a saved (resolved) config file back into its dataclass."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return to_dataclass(cfg, schema, source=str(path))


def to_yaml(obj: Any) -> str:
    """A dataclass (or DictConfig) as resolved YAML."""
    if dataclasses.is_dataclass(obj):
        obj = OmegaConf.structured(obj)
    return OmegaConf.to_yaml(obj, resolve=True)


def save_yaml(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, to_yaml(obj))


def require_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    """Raise a ValueError naming the field when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got '{value}'")


def require_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise a ValueError naming the field unless ``value`` is a finite number > 0 (>= 0 with allow_zero).

    NaN compares false with everything, so a bare ``value < 0`` would let it through.
    """
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
