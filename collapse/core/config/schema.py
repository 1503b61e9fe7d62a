"""The config schema as data: a JSON Schema for editors, and the configuration reference page
(type, default, allowed values, meaning and checks of every key), both from the dataclasses."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import sys
import textwrap
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .loading import Config


def _schema_of(hint: Any) -> dict[str, Any]:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _schema_of(args[0])}
    if origin is dict:
        return {"type": "object"}
    if type(None) in args:
        return {"anyOf": [_schema_of(next(a for a in args if a is not type(None))), {"type": "null"}]}
    names = {int: "integer", float: "number", str: "string", bool: "boolean"}
    return {"type": names[hint]} if hint in names else {}


def json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of study configs, from the dataclasses: editors complete and
    check YAML with it (`# yaml-language-server: $schema=collapse.schema.json`)."""
    sections = {}
    for section in dataclasses.fields(Config):
        cls = get_type_hints(Config)[section.name]
        hints = get_type_hints(cls)
        props = {}
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            props[f.name] = {**_schema_of(hints[f.name]), "description": f.metadata.get("doc", ""), "default": default}
        sections[section.name] = {"type": "object", "properties": props, "additionalProperties": False}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "collapse study config",
        "type": "object",
        "properties": sections,
        "additionalProperties": False,
    }


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "choice"
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return "mapping"
    if type(None) in args:
        return f"{_type_name(next(a for a in args if a is not type(None)))} or null"
    return getattr(hint, "__name__", str(hint))


def _allowed(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return ", ".join(f"`{a}`" for a in args)
    if origin is list or type(None) in args:
        return "".join(_allowed(a) for a in args if a is not type(None))
    return ""


def _text(node: ast.expr, prefix: str) -> str | None:
    """A key or message argument as text: a string, or an f-string with its fields shown as `…`
    (the `prefix` parameter of a section's `validate` as the section's name)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value.value, ast.Name) and value.value.id == "prefix":
                parts.append(prefix)
            else:
                parts.append("…")
        return "".join(parts)
    return None


def _checks(functions: list[Any], prefix: str) -> dict[str, list[str]]:
    """`require(condition, key, message)` calls in these functions' source: key -> messages."""
    found: dict[str, list[str]] = {}
    for fn in functions:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and len(node.args) == 3):
                continue
            key, message = _text(node.args[1], prefix), _text(node.args[2], prefix)
            if key and message:
                key = key.split("[")[0].split(" ")[0]  # `grid.contamination[…]` -> `grid.contamination`
                found.setdefault(key, []).append(message.replace("|", "\\|"))
    return found


def reference_markdown() -> str:
    """The configuration reference page, from the dataclasses: every key with its type, default,
    allowed values, meaning, and the one-line checks `validate` gives it. `scripts/render_docs.py`
    writes it into docs/configuration.md; a test fails when the page differs."""
    from . import loading

    lines = []
    for section in dataclasses.fields(Config):
        cls = get_type_hints(Config)[section.name]
        hints = get_type_hints(cls)
        module = sys.modules[cls.__module__]
        checks = _checks([cls.validate, loading.validate], section.name)
        own = cls.__doc__ or ""
        about = own if not own.startswith(f"{cls.__name__}(") else (module.__doc__ or "")  # dataclass's default doc
        lines += [f"## `{section.name}`", "", about.strip(), ""]
        lines += ["| key | type | default | allowed | meaning | checked |", "|---|---|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            key = f"{section.name}.{f.name}"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            meaning = f.metadata.get("doc", "").replace("|", "\\|")
            said = "; ".join(f"`{k}` {m}" if k != key else m for k, m in _checks_for(checks, key))
            lines.append(
                f"| `{key}` | {_type_name(hints[f.name])} | `{json.dumps(default)}` | {_allowed(hints[f.name])} | "
                f"{meaning} | {said} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _checks_for(checks: dict[str, list[str]], key: str) -> list[tuple[str, str]]:
    """The checks that name `key` first: `a.b` and `a.b …` (a message about several keys)."""
    return [(k, m) for k, messages in checks.items() if k == key for m in messages]
