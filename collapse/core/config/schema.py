"""The config schema as data: a JSON Schema for editors, and the configuration reference page
(type, default, allowed values, meaning and checks of every key), both from the dataclasses."""

from __future__ import annotations

import dataclasses
import json
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


def reference_markdown() -> str:
    """The README's config reference, generated from the dataclasses (a test keeps them in sync)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(
            section.type if isinstance(section.type, type) else get_type_hints(Config)[section.name]
        ):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"| `{section.name}.{f.name}` | `{json.dumps(default)}` | {f.metadata.get('doc', '')} |")
    return "\n".join(lines)
