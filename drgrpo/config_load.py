"""Reading a run's config: defaults < YAML file < command-line overrides, into a `Config`
(the schema, drgrpo/config.py).

    cfg = load_config("launch/configs/qwen2.5-math-7b.yaml", ["--rollout.samples_per_prompt", "4"])

Unknown keys are errors everywhere (a typo must never be silently ignored): the YAML may not
repeat a key, and a flag is typed by the setting it names. Invalid input is reported all at
once as a `ConfigError` whose `problems` are "dotted.path: reason" lines: pydantic's errors are
turned into such lines here, with the closest valid name for a misspelt one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from drgrpo.config import CROSS_FIELD_PATHS, Config, cross_field_problems


class ConfigError(Exception):
    """Invalid configuration; `problems` holds one "dotted.path: reason" string per problem."""

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__(str(self))

    def __reduce__(self):  # keep the problems list when pickled (e.g. raised inside a Ray actor)
        return type(self), (self.problems, self.source)

    def __str__(self) -> str:
        n = len(self.problems)
        where = f" from {self.source}" if self.source else ""
        header = f"invalid configuration{where} ({n} problem{'s' * (n != 1)}):"
        return "\n".join([header, *(f"  {p}" for p in self.problems)])


# ---------------------------------------------------------------- reading YAML and overrides

class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: YAML silently keeps the last, hiding the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"], str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read config file ({e})"], str(path)) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        reason = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}: YAML syntax error: {reason}"], str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        reason = f"the top level must be a mapping of sections (model:, data:, ...), got {type(data).__name__}"
        raise ConfigError([f"{path}: {reason}"], str(path))
    return data


_FLAG = re.compile(r"--([A-Za-z_][\w-]*(?:\.[\w-]+)*)(?:=(.*))?", re.DOTALL)


def _split_overrides(args: Sequence[str]) -> tuple[list[tuple[list[str], str]], list[str]]:
    """Pair each --dotted.key with its raw string value; return (pairs, problems)."""
    pairs, problems, i = [], [], 0
    while i < len(args):
        match = _FLAG.fullmatch(args[i])
        if not match:
            problems.append(f"{args[i]}: expected a flag like --section.field VALUE or --section.field=VALUE")
            i += 1
            continue
        key, value = match.group(1), match.group(2)
        if value is None:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                problems.append(f"{key}: missing its value (--{key} VALUE or --{key}=VALUE)")
                i += 1
                continue
            value, i = args[i + 1], i + 1
        elif value == "":
            problems.append(f"{key}: missing its value (--{key} VALUE or --{key}=VALUE)")
        i += 1
        if value != "":
            pairs.append((key.split("."), value))
    return pairs, problems


def _parse_value(key: str, raw: str) -> tuple[Any, str | None]:
    try:
        return yaml.safe_load(raw), None
    except yaml.YAMLError as e:
        return None, f"{key}: cannot parse value {raw!r} as YAML ({getattr(e, 'problem', None) or e})"


def _set(data: dict, keys: list[str], value: Any, problems: list[str]) -> None:
    node = data
    for depth, part in enumerate(keys[:-1]):
        if node.get(part) is None:
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            prefix = ".".join(keys[: depth + 1])
            problems.append(f"{'.'.join(keys)}: cannot set it, {prefix} is a single value, not a section")
            return
        node = child
    node[keys[-1]] = value


def parse_overrides(args: Sequence[str]) -> dict:
    """["--a.b", "1", "--c.d=2"] -> {"a": {"b": 1}, "c": {"d": 2}}; values are YAML. Raises ConfigError."""
    pairs, problems = _split_overrides(args)
    data: dict = {}
    for keys, raw in pairs:
        value, problem = _parse_value(".".join(keys), raw)
        if problem:
            problems.append(problem)
        else:
            _set(data, keys, value, problems)
    if problems:
        raise ConfigError(problems, "the command line")
    return data


def _leaf(keys: list[str]) -> tuple[Any, str | None]:
    """The type annotation at a dotted path (None if unknown) or a problem if it descends into a value."""
    node: Any = Config
    for depth, part in enumerate(keys):
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(part)
            if field is None:
                return None, None  # unknown name: pydantic reports it, with a suggestion
            node = field.annotation
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            prefix = ".".join(keys[:depth])
            return None, f"{'.'.join(keys)}: {prefix} is a single value, not a section"
    return node, None


def _is_text(annotation: Any) -> bool:
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    return annotation is str


def _apply_overrides(data: dict, args: Sequence[str]) -> list[str]:
    pairs, problems = _split_overrides(args)
    for keys, raw in pairs:
        annotation, problem = _leaf(keys)
        if problem:
            problems.append(problem)
            continue
        # Text settings take the string as typed: `--model.path 7` is "7", `--data.template no` is "no".
        value, problem = (raw, None) if _is_text(annotation) else _parse_value(".".join(keys), raw)
        if problem:
            problems.append(problem)
        else:
            _set(data, keys, value, problems)
    return problems


# ---------------------------------------------------------------- turning errors into lines

def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_at(keys: Sequence[Any]) -> type[BaseModel] | None:
    node: Any = Config
    for part in keys:
        field = node.model_fields.get(part) if isinstance(part, str) else None
        node = field.annotation if field else None
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return None
    return node


def _unknown(loc: tuple) -> str:
    parent = _model_at(loc[:-1])
    kind = "section" if parent is Config else "field"
    if parent is None:
        return f"unknown {kind}"
    names = list(parent.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f"unknown {kind} (did you mean '{close[0]}'?)" if close else f"unknown {kind} (valid: {', '.join(names)})"


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors(include_url=False):
        path = ".".join(str(p) for p in e["loc"]) or "config"
        kind, section = e["type"], _model_at(e["loc"])
        if kind == "missing" and section is not None:
            # A missing section is reported as the settings it lacks: `model.path`, not `model`.
            required = [name for name, f in section.model_fields.items() if f.is_required()]
            lines += [f"{path}.{name}: required, but not set" for name in required]
            continue
        if kind == "extra_forbidden":
            reason = _unknown(e["loc"])
        elif kind == "missing":
            reason = "required, but not set"
        elif kind == "cross_field":
            reason = e["msg"]
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            reason = f"must be a mapping, got {_show(e['input'])}"
        else:
            reason = f"{e['msg']} (got {_show(e['input'])})"
        lines.append(f"{path}: {reason}")
    return lines


def _partial_cross_field(data: dict, err: ValidationError) -> list[str]:
    """Cross-field problems among the fields that did validate, so one run reports everything."""
    bad = {tuple(e["loc"][:2]) for e in err.errors()}
    values = {}
    for section in {p.split(".")[0] for p in CROSS_FIELD_PATHS}:
        raw, cls = data.get(section) or {}, Config.model_fields[section].annotation
        if not isinstance(raw, dict) or (section,) in bad:
            continue
        kept = {k: v for k, v in raw.items() if (section, k) not in bad and k in cls.model_fields}
        try:
            model = cls.model_validate(kept)
        except ValidationError:
            continue
        values.update({f"{section}.{k}": getattr(model, k) for k in cls.model_fields if (section, k) not in bad})
    return [f"{path}: {reason}" for path, reason in cross_field_problems(values)]


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `overrides`. Raises ConfigError."""
    parts = ([str(path)] if path is not None else []) + (["the command line"] if overrides else [])
    source = " and ".join(parts) or None
    data = _read_yaml(Path(path)) if path is not None else {}
    problems = _apply_overrides(data, overrides)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        problems += _format_errors(err)
        if not any(e["type"] == "cross_field" for e in err.errors()):
            problems += _partial_cross_field(data, err)
    if problems:
        raise ConfigError(problems, source)
    return cfg
