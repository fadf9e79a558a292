"""Loading typed configs: YAML files, dotted `--set a.b=c` overrides, type coercion, unknown-key errors.

The same dotted keys (`loss.temperature`, `train.batch_size`, ...) serve YAML recipes, `--set a.b=c` and
Tune trials.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError  # noqa: F401 (re-exported: pipeline.config.ConfigError)


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config class, e.g. ['data.train', ..., 'run.name']."""
    keys = []
    for name, typ in _field_types(cls).items():
        if dataclasses.is_dataclass(typ):
            keys += valid_keys(typ, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def describe_keys(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf: the reference table in `pipeline keys` and the README."""
    rows = []
    for f in dataclasses.fields(cls):
        typ = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(typ):
            rows += describe_keys(typ, f"{prefix}{f.name}.")
        else:
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, f.metadata.get("help", ""), value))
    return rows


def _coerce(value: Any, typ: Any, key: str) -> Any:
    args = typing.get_args(typ)
    if type(None) in args:  # `X | None`: empty means "the component's own default"
        if value is None or value == "":
            return None
        typ = next(a for a in args if a is not type(None))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r} is not a boolean; use true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}={value!r} is not an integer")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not an integer") from None
        if not f.is_integer():
            raise ConfigError(f"{key}={value!r} is not an integer")
        return int(f)
    if typ is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} is not a number") from None
        if not math.isfinite(out):
            raise ConfigError(f"{key}={value!r} must be finite")
        return out
    if typ is str:
        return "" if value is None else str(value)
    if typ is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} is not a list; write it as [a, b, c]")
        return value
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} is not a mapping; write it as {{a.b: {{grid: [1, 2]}}}}")
        return value
    return value


def build(cls: type, raw: dict | None, prefix: str = "") -> Any:
    """Build config class `cls` from a nested dict, rejecting unknown keys with the list of valid ones."""
    raw = dict(raw or {})
    types = _field_types(cls)
    unknown = [k for k in raw if k not in types]
    if unknown:
        raise ConfigError(unknown_key_message(prefix + str(unknown[0]), valid_keys(cls, prefix)))
    kwargs = {}
    for name, typ in types.items():
        if name not in raw:
            continue
        key = prefix + name
        if dataclasses.is_dataclass(typ):
            if not isinstance(raw[name], dict):
                raise ConfigError(f"{key} is a section; give it keys such as {valid_keys(typ, key + '.')[:3]}")
            kwargs[name] = build(typ, raw[name], key + ".")
        else:
            kwargs[name] = _coerce(raw[name], typ, key)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=c' -> ('a.b', c) with c parsed as YAML (so 3 is an int, [1,5] a list, true a bool)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} is not of the form key=value, e.g. --set train.epochs=3")
    key, value = text.split("=", 1)
    import yaml  # here, not at import: the models and losses load where PyYAML is not installed

    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def unknown_key_message(key: str, keys: list[str]) -> str:
    """One line: the closest valid key, the keys of the section `key` names (or the sections, when that is
    unknown too), and where the full list is. Listing all ~100 keys would bury the suggestion."""
    close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = sorted(k[len(section):] for k in keys if k.startswith(section)) if section else []
    if siblings:
        where = f"{section.rstrip('.')} has {', '.join(siblings)}"
    else:
        sections = sorted({k.split(".", 1)[0] for k in keys})
        where = f"the sections are {', '.join(sections)}"
    return f"unknown key {key!r}{hint}; {where}; `pipeline keys` lists every key with its meaning"


def apply_overrides(raw: dict, overrides: dict[str, Any], cls: type) -> dict:
    """Set dotted keys in a nested dict; a key not in the schema of `cls` is an error listing valid keys."""
    keys = set(valid_keys(cls))
    out = json.loads(json.dumps(raw))  # deep copy of plain data
    for key, value in overrides.items():
        if key not in keys:
            raise ConfigError(unknown_key_message(key, sorted(keys)))
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is not a section")
        node[leaf] = value
    return out


@functools.cache
def _unique_key_loader() -> type:
    """YAML's safe loader, but a key given twice in one mapping is an error: a plain load keeps the last one
    silently, so a recipe with two `train:` sections would lose the first. Made on first use: PyYAML is
    imported only where a recipe is read."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise ConfigError(f"{self.name}: line {key_node.start_mark.line + 1}: {key!r} is given twice "
                                      f"in one section (first at line {seen[key] + 1}); keep one")
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_yaml(path: Path) -> Any:
    """A recipe file's data; a syntax error or a repeated key is one line with the file, line and column."""
    import yaml

    loader = _unique_key_loader()(path.read_text())
    loader.name = str(path)  # for the duplicate-key message
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Any:
    """YAML file (optional) + overrides -> validated config of class `cls`."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing YAML with --config")
        raw = read_yaml(p) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{p} must hold a mapping of sections (data:, model:, ...)")
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    raw = apply_overrides(raw, overrides or {}, cls)
    return build(cls, raw)


def narrow(cfg: Any, cls: type) -> Any:
    """The sections of `cfg` that job config `cls` has: one recipe serves `run` and `train` alike."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


def to_dict(cfg: Any) -> dict:
    """Plain nested dict: crosses into Ray workers and is written as the run's config.json."""
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "", leaves: set[str] | frozenset = frozenset()) -> dict[str, Any]:
    """Nested dict -> {'a.b': value}; the dotted view Tune and reports use. Keys in `leaves` keep their
    mapping value whole (a search space is one value, not more keys)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix + k not in leaves:
            out.update(flatten(v, f"{prefix}{k}.", leaves))
        else:
            out[prefix + k] = v
    return out


def flat_config(cfg: Any) -> dict[str, Any]:
    """A config as {dotted key: value}, one entry per key of its schema."""
    return flatten(to_dict(cfg), leaves=set(valid_keys(type(cfg))))
