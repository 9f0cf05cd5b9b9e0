"""Dataclass schemas filled from YAML files and dotted `key=value` overrides, through OmegaConf.

Training recipes (`llavakit.train.config`) and model specs (`llavakit.model.build`) are read
here, so both check keys and values the same way. The dataclasses are the schema; OmegaConf
merges each layer (one file's mapping) onto their defaults, then the overrides, and converts
the result back to the dataclasses:

    config = load_structured(TrainConfig, [(path, read_yaml(path))], ["optimization.lr=2e-5"])

Values are read as YAML (`true`, `[1, 2]`, `{a: 1}`, `1e-3` is a number); list items are
addressed by index (`data.datasets.0.fraction=0.5`); a numeric string becomes a number where
the field is one. A key the schema does not declare, a value of the wrong kind or an index past
a list's end raises ValueError naming the full dotted key and the file or override it came
from, so a typo never trains silently with a default. Sections (dataclasses) merge key by key;
a mapping typed `Any` or `dict` (a backbone's config) takes any key and is replaced whole by a
later layer or override that sets it. Unions such as `int | list[int]` are beyond OmegaConf:
such fields are typed `Any` and declared with `union_field`, whose check runs on each layer's
and override's value (naming where it came from) and once more on the result.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

Schema = TypeVar("Schema")
# One layer: where it comes from (a file, for messages) and its mapping.
Layer = tuple[str | Path, Mapping[str, Any]]

_ACCEPTS, _EXPECTS = "accepts", "expects"
_KINDS = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"))


def union_field(default: Any, accepts: Callable[[Any], bool], expects: str) -> Any:
    """A field typed `Any` whose values `accepts` approves; `expects` completes "must be ..." in errors."""
    return dataclasses.field(default=default, metadata={_ACCEPTS: accepts, _EXPECTS: expects})


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds (OmegaConf's reader: `1e-3` is a number, a duplicate key fails)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as error:
        raise ValueError(f"{what} {path} is not valid YAML: {error}") from None
    except OmegaConfBaseException:
        loaded = None
    if not isinstance(loaded, DictConfig):
        raise ValueError(f"{what} {path} must hold a mapping at the top level")
    return OmegaConf.to_container(loaded)


def load_structured(schema: type[Schema], layers: Sequence[Layer] = (), overrides: Sequence[str] = ()) -> Schema:
    """`schema`'s defaults, then each layer merged over them, then the `key=value` overrides."""
    config = OmegaConf.structured(schema)
    for source, data in layers:
        _merge_layer(config, schema, source, data)
    for text in overrides:
        _apply_override(config, schema, text)
    where = f"{layers[-1][0]}: " if layers and not overrides else ""
    try:
        result = OmegaConf.to_object(config)
    except OmegaConfBaseException as error:
        raise ValueError(where + _describe(error, schema, {})) from None
    check_union_fields(result, where)
    return result


def check_union_fields(config: Any, where: str = "", prefix: str = "") -> None:
    """Run the checks of the `union_field`s of a dataclass tree; ValueError names the first bad key."""
    if isinstance(config, list):
        for index, item in enumerate(config):
            check_union_fields(item, where, f"{prefix}{index}.")
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        problem = _union_problem(type(config), f"{prefix}{spec.name}", value)
        if problem:
            raise ValueError(where + problem)
        check_union_fields(value, where, f"{prefix}{spec.name}.")


def _union_problem(section: Any, key: str, value: Any) -> str | None:
    """What is wrong when `key` names a `union_field` of `section` and `value` is none of its kinds."""
    if not dataclasses.is_dataclass(section):
        return None
    spec = {spec.name: spec for spec in dataclasses.fields(section)}.get(key.rpartition(".")[2])
    accepts = spec.metadata.get(_ACCEPTS) if spec is not None else None
    interpolation = isinstance(value, str) and "${" in value  # checked once resolved
    if accepts is None or interpolation or accepts(value):
        return None
    return f"config key '{key}' must be {spec.metadata[_EXPECTS]}, got {value!r}"


# ---- layers and overrides ----------------------------------------------------------------------


def _merge_layer(config: DictConfig, schema: type, source: str | Path, data: Mapping[str, Any]) -> None:
    """Merge one file's mapping; the open mappings it sets replace the earlier ones whole."""
    entries = list(_entries(schema, data))
    for key, section, _, value in entries:
        problem = _union_problem(section, key, value)
        if problem:
            raise ValueError(f"{source}: {problem}")
    try:
        for key, _, kind, value in entries:
            if _is_open(kind) and isinstance(value, Mapping) and OmegaConf.select(config, key) is not None:
                OmegaConf.update(config, key, {}, merge=False)
        config.merge_with(data)
    except OmegaConfBaseException as error:
        raise ValueError(f"{source}: {_describe(error, schema, data)}") from None


def _apply_override(config: DictConfig, schema: type, text: str) -> None:
    """`a.b.c=value`: a section merges the value, anything else is replaced by it."""
    key, value = _parse_override(text)
    _check_path(config, key, text)
    parent = key.rpartition(".")[0]
    problem = _union_problem(_strip_optional(_type_at(schema, parent) if parent else schema), key, value)
    if problem:
        raise ValueError(f"override '{text}': {problem}")
    target = _strip_optional(_type_at(schema, key))
    merge = dataclasses.is_dataclass(target) or typing.get_origin(target) is list
    try:
        OmegaConf.update(config, key, value, merge=merge)
    except OmegaConfBaseException as error:
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        raise ValueError(f"override '{text}': {_describe(error, schema, nested)}") from None


def _parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", the value read as YAML by OmegaConf's reader)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"override {text!r} must look like key=value (e.g. optimization.lr=2e-5)")
    try:
        return key, OmegaConf.to_container(OmegaConf.from_dotlist([f"value={raw}"]))["value"]
    except yaml.YAMLError as error:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({error})") from None
    except OmegaConfBaseException as error:
        raise ValueError(f"override {text!r}: the value cannot be held in a config ({error.msg})") from None


def _check_path(config: DictConfig, key: str, text: str) -> None:
    """Every list along `key` has the index it names, and no value along it is a scalar.

    (OmegaConf would misread a bad index, and replace a scalar by a mapping to hold the key.)
    """
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        dotted = ".".join(parts[: depth + 1])
        if OmegaConf.is_list(node):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"override '{text}': '{dotted}' is not an index of a list of {len(node)} item(s)")
            node = node[int(part)]
        elif OmegaConf.is_dict(node) and part in node:
            node = node[part]
            if depth < len(parts) - 1 and node is not None and not OmegaConf.is_config(node):
                raise ValueError(f"override '{text}': '{dotted}' holds no keys (it is {node!r})")
        else:
            return


# ---- the schema, walked ------------------------------------------------------------------------


def _strip_optional(kind: Any) -> Any:
    """`X | None` -> X."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        options = [option for option in typing.get_args(kind) if option is not type(None)]
        return options[0] if len(options) == 1 else kind
    return kind


def _is_open(kind: Any) -> bool:
    """A mapping of any keys: typed `Any` or `dict`, not a section."""
    kind = _strip_optional(kind)
    return kind is Any or kind is dict or typing.get_origin(kind) is dict


def _child_type(kind: Any, part: str) -> Any:
    """The declared type of `part` inside `kind`; None when `kind` does not declare it."""
    kind = _strip_optional(kind)
    if dataclasses.is_dataclass(kind):
        return typing.get_type_hints(kind).get(part)
    if typing.get_origin(kind) is list and part.isdigit():
        return (typing.get_args(kind) or (Any,))[0]
    return Any if _is_open(kind) else None


def _type_at(schema: type, key: str) -> Any:
    kind: Any = schema
    for part in key.split("."):
        if kind is None:
            return None
        kind = _child_type(kind, part)
    return kind


def _entries(schema: Any, data: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any, Any]]:
    """(dotted key, parent type, declared type or None, value) of every entry of `data` inside sections and lists."""
    kind = _strip_optional(schema)
    if dataclasses.is_dataclass(kind) and isinstance(data, Mapping):
        items = [(str(key), value) for key, value in data.items()]
    elif typing.get_origin(kind) is list and isinstance(data, (list, tuple)):
        items = [(str(index), value) for index, value in enumerate(data)]
    else:
        return
    for part, value in items:
        key = f"{prefix}.{part}" if prefix else part
        child = _child_type(kind, part)
        yield key, kind, child, value
        if child is not None:
            yield from _entries(child, value, key)


# ---- errors ------------------------------------------------------------------------------------


def _describe(error: OmegaConfBaseException, schema: type, data: Any) -> str:
    """OmegaConf's error as one line naming the full dotted key."""
    key = _error_key(error, schema, data)
    section = error.object_type
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(section):
        names = [spec.name for spec in dataclasses.fields(section)]
        if str(error.key) not in names:
            parent = key.rpartition(".")[0]
            where = f"'{parent}'" if parent else "the top level"
            return f"unknown config key '{key}'; {where} has: {', '.join(names)}"
    detail = (error.msg or str(error) or type(error).__name__).splitlines()[0]
    expected = _expected(_type_at(schema, key)) if key else None
    if isinstance(error, ValidationError) and expected:
        return f"config key '{key}' must be {expected} ({detail})"
    return f"config key '{key or '<root>'}': {detail}"


def _error_key(error: OmegaConfBaseException, schema: type, data: Any) -> str:
    """The full dotted key of an error; OmegaConf drops the path for a section built inside a list."""
    key = re.sub(r"\[(\d+)\]", r".\1", str(error.full_key or "")).strip(".")
    entries = list(_entries(schema, data))
    if key and any(entry[0] == key for entry in entries):
        return key
    for path, parent, kind, value in entries:
        unknown_here = parent is error.object_type and path.rpartition(".")[2] == str(error.key)
        not_a_mapping = error.key is None and dataclasses.is_dataclass(kind) and not isinstance(value, Mapping)
        if unknown_here or not_a_mapping:
            return path
    return key


def _expected(kind: Any) -> str | None:
    """What a value of `kind` must be, in words (None: no simple kind)."""
    kind = _strip_optional(kind)
    for simple, words in _KINDS:
        if kind is simple:
            return words
    if typing.get_origin(kind) is list or kind is list:
        return "a list"
    if dataclasses.is_dataclass(kind) or kind is dict or typing.get_origin(kind) is dict:
        return "a mapping"
    return None


__all__ = ["Layer", "check_union_fields", "load_structured", "read_yaml", "union_field"]
