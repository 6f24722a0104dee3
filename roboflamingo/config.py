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
        raise ConfigError(f"configs/{config_name}.yaml with overrides {overrides or []}: {e}") from e


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
    groups = tuple(g.name for g in command_groups(config_name, schema))
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


# `name: text` or `a, b / c: text`, at the start of a docstring line (Google-style Args or plain) or
# after a sentence on it (`scene: the scene to check. tasks: empty = all 34.`).
_DOC_ENTRY = re.compile(r"(?:^|(?<=\. ))([A-Za-z_]\w*(?:\s*[,/]\s*[A-Za-z_]\w*)*):\s+")
_DOC_SECTION = re.compile(r"^(Args|Arguments|Attributes|Fields):$")


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


def _doc_entries(text: str, names: set[str]) -> list[tuple[list[str], int, int]]:
    """``(field names, start of their text, end)`` for each entry on one docstring line."""
    hits = []
    for m in _DOC_ENTRY.finditer(text):
        keys = [k.strip() for k in re.split(r"[,/]", m.group(1))]
        if all(k in names for k in keys):
            hits.append((keys, m.start(), m.end()))
    if not hits or hits[0][1] != 0:
        return []
    ends = [h[1] for h in hits[1:]] + [len(text)]
    return [(keys, start, end) for (keys, _, start), end in zip(hits, ends)]


def summary(cls: type) -> str:
    """What a class's docstring says before its first paragraph break or field entry, on one line."""
    names = set(_fields(cls)) if dataclasses.is_dataclass(cls) else set()
    out = []
    for line in (inspect.getdoc(cls) or "").splitlines():
        text = line.strip()
        if not text or _DOC_SECTION.match(text) or _doc_entries(text, names):
            break
        out.append(text)
    return " ".join(out)


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the sentence(s) its dataclass docstring gives it (continuation lines joined).

    Entries naming several fields (``width, layers: ...``, ``a / b: ...``) document each of them.
    """
    names = set(_fields(cls))
    docs: dict[str, str] = {}
    current: list[str] = []
    indent = 0
    for line in (inspect.getdoc(cls) or "").splitlines():
        text, depth = line.strip(), len(line) - len(line.lstrip())
        # deeper than the entry it follows: a continuation, even when it reads `family: ...`
        if current and text and depth > indent:
            for k in current:
                docs[k] += " " + text
            continue
        current = []
        for keys, start, end in _doc_entries(text, names):
            for k in keys:
                docs[k] = text[start:end].strip()
            current, indent = keys, depth
    return docs


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
