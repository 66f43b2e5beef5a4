"""Settings from the environment: every config field, by one naming rule.

`LEMONDATA_EXPORTER_` then the field's path in capitals, sections joined by a
double underscore:

    LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND=5     polling.requests_per_second
    LEMONDATA_EXPORTER_LOG_LEVEL=debug                    log_level
    LEMONDATA_EXPORTER_DISCOVERY__FILES='[{path: /data/tasks.jsonl}]'

A variable overrides the file. Text fields take the value as it is; any other
field reads it as YAML (numbers, `true`, lists and mappings in flow style). A
variable with the prefix that names no field is a problem, as an unknown key in
the file is, except the few that are not settings (the token). Values are
never echoed: a secret pasted in the wrong variable must not reach a log.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel

ENV_PREFIX = "LEMONDATA_EXPORTER_"
SEPARATOR = "__"
# Variables with the prefix that are not config fields.
NOT_SETTINGS = frozenset({"LEMONDATA_EXPORTER_TOKEN"})


def variable_name(path: tuple[str, ...]) -> str:
    """("polling", "requests_per_second") -> LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND."""
    return ENV_PREFIX + SEPARATOR.join(part.upper() for part in path)


@dataclass
class EnvironmentSettings:
    """What the environment sets: a tree shaped like the file, and where each came from."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # "polling.requests_per_second" -> $VAR
    problems: list[tuple[str, str]] = field(default_factory=list)  # (variable, problem)


def read_environment(environ: Mapping[str, str], root: type[BaseModel]) -> EnvironmentSettings:
    """The settings `environ` gives for the model `root`; never raises."""
    found = EnvironmentSettings()
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        parts = name.removeprefix(ENV_PREFIX).split(SEPARATOR)
        path, problem = _resolve(root, parts)
        if problem:
            found.problems.append((name, problem))
            continue
        annotation = _annotation_at(root, path)
        raw = environ[name]
        if _takes_text(annotation):
            value: Any = raw
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                found.problems.append((name, "not a valid YAML value for this setting"))
                continue
        node = found.values
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        found.origins[".".join(path)] = f"${name}"
    return found


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = merge(current, value)
        else:
            merged[key] = value
    return merged


def origin_of(field_path: str, origins: Mapping[str, str], default: str) -> str:
    """Where the setting at `field_path` (or the section holding it) came from."""
    path = field_path
    while path:
        if path in origins:
            return origins[path]
        # "discovery.files[0].path" -> "discovery.files[0]" -> "discovery.files" -> ...
        path = path.rpartition("[")[0] if path.endswith("]") else path.rpartition(".")[0]
    return default


def _resolve(root: type[BaseModel], parts: list[str]) -> tuple[tuple[str, ...], str]:
    """The field path the variable's parts name, or a problem saying why none."""
    model: type[BaseModel] | None = root
    path: list[str] = []
    for index, part in enumerate(parts):
        if model is None:
            return (), f"{'.'.join(path)} has no sub-settings"
        names = {name.upper(): name for name in model.model_fields}
        if not part or part not in names:
            close = difflib.get_close_matches(part, list(names), n=1, cutoff=0.6) or [
                known for known in names if part and known.startswith(part + "_")
            ]
            hint = f"; did you mean {variable_name((*path, names[close[0]]))}?" if close else ""
            where = f" in {'.'.join(path)}" if path else ""
            return (), f"unknown setting{where}{hint}"
        name = names[part]
        path.append(name)
        if index < len(parts) - 1:
            model = _model(model.model_fields[name].annotation)
    return tuple(path), ""


def _annotation_at(root: type[BaseModel], path: tuple[str, ...]) -> Any:
    model: type[BaseModel] | None = root
    annotation: Any = None
    for name in path:
        assert model is not None  # _resolve walked this path
        annotation = model.model_fields[name].annotation
        model = _model(annotation)
    return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds (`X` or `X | None`), not a list's item model."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType, Annotated):
        for argument in typing.get_args(annotation):
            found = _model(argument)
            if found is not None:
                return found
    return None


def _takes_text(annotation: Any) -> bool:
    """True for fields whose value is text (str, Path, a Literal of strings), maybe optional."""
    if annotation in (str, Path):
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(choice, str) for choice in typing.get_args(annotation))
    if origin in (Union, types.UnionType, Annotated):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(arguments) and _takes_text(arguments[0])
    return False


def changed_settings(config: BaseModel, defaults: BaseModel) -> list[tuple[str, Any]]:
    """(field path, value) for every setting of `config` not at its default, in order.

    Lists (tasks, watched files, failure rules) are one setting each.
    """
    return _changed("", config.model_dump(mode="json"), defaults.model_dump(mode="json"))


def _changed(prefix: str, values: Any, defaults: Any) -> list[tuple[str, Any]]:
    if isinstance(values, dict) and isinstance(defaults, dict):
        found = []
        for key, value in values.items():
            path = f"{prefix}.{key}" if prefix else key
            found += _changed(path, value, defaults.get(key))
        return found
    return [] if values == defaults else [(prefix, values)]
