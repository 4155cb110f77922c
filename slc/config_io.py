"""Config dataclasses (slc.config) to and from plain dicts, JSON/YAML files
and command-line flags, with one precedence: defaults < file < flags."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as nested plain dicts and lists (JSON/YAML safe)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from `to_dict` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {sorted(unknown)}; known: {', '.join(sorted(names))}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a mapping of {kind.__name__} settings, got {value!r}")
            values[name] = from_dict(kind, value)
        else:
            values[name] = _typed(name, kind, value)
    return cls(**values)


def _typed(name: str, kind: Any, value: Any) -> Any:
    """`value` as a setting of type `kind` (a YAML list becomes a tuple, an
    int a float); a value that is not one is a ValueError naming both."""
    try:
        return _adapter(kind).validate_python(value)
    except pydantic.ValidationError as error:
        raise ValueError(f"{name}: {error.errors()[0]['msg']} (got {value!r})") from None


@functools.cache
def _adapter(kind: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(kind)


def dumps(config: Any, fmt: str = "json") -> str:
    """Serialise a config as `json` or `yaml` text."""
    data = to_dict(config)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False)
    return json.dumps(data, indent=2) + "\n"


def load(cls: type[T], path: str | Path) -> T:
    """Read a config from a .json, .yaml or .yml file; settings it leaves out
    keep their defaults. A file that does not parse or names unknown settings
    raises ValueError naming the file."""
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
        if not isinstance(data, dict | None):
            raise ValueError(f"expected a mapping of {cls.__name__} settings, got {type(data).__name__}")
        return from_dict(cls, data or {})
    except (ValueError, TypeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {error}") from None


def override(config: T, values: Mapping[str, Any]) -> T:
    """`config` with the settings in `values` replaced. Keys are field names,
    dotted for nested configs (`"audio.max_duration_s"`); a None value is
    skipped, so a command-line flag that was not given keeps what `config`
    holds. Unknown names raise ValueError; the dataclasses check the result."""
    fields = {f.name for f in dataclasses.fields(config)}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if value is None:
            continue
        head, _, rest = name.partition(".")
        if head not in fields or (rest and not dataclasses.is_dataclass(getattr(config, head))):
            raise ValueError(f"unknown {type(config).__name__} setting: {name!r}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = tuple(value) if isinstance(value, list) else value
    for head, inner in nested.items():
        direct[head] = override(direct.get(head, getattr(config, head)), inner)
    return dataclasses.replace(config, **direct) if direct else config


def resolve(cls: type[T], path: str | Path | None, values: Mapping[str, Any]) -> T:
    """Settings by precedence: `cls`'s defaults < the file at `path` (when
    not None) < the non-None `values` (names as in `override`)."""
    return override(load(cls, path) if path is not None else cls(), values)


def default(cls: type, name: str) -> Any:
    """The default of setting `name` (dotted for nested configs) of config class `cls`."""
    return functools.reduce(getattr, name.split("."), cls())


def changed(before: Mapping[str, Any], now: Mapping[str, Any], free: tuple[str, ...] = ()) -> list[str]:
    """The settings (dotted names) whose values differ between two `to_dict`
    outputs, but for those in `free`: what makes a resumed run another run."""
    flat_before, flat_now = dotted(before), dotted(now)
    names = (flat_before.keys() | flat_now.keys()) - set(free)
    return sorted(name for name in names if flat_before.get(name) != flat_now.get(name))


def dotted(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings (`to_dict` output) as one mapping of dotted names, as
    `override` takes them: `{"audio": {"trim_silence": True}}` ->
    `{"audio.trim_silence": True}`."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
