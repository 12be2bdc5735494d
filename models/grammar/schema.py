"""The schema forms Dria's SDK sends, as plain JSON schema.

- OpenAI form: a strict JSON schema, used as it is.
- Gemini form: upper-case type names (`"OBJECT"`, `"STRING"`), a property given as a
  bare type name (`"kind": "STRING"`), and a nested type object (`{"type": {"type":
  "ARRAY", ...}}`): normalized into a JSON schema here.
"""

from __future__ import annotations

from typing import Any

_TYPES = {"OBJECT", "ARRAY", "STRING", "INTEGER", "NUMBER", "BOOLEAN", "NULL"}


def normalize_schema(schema: Any) -> Any:
    """A copy of `schema` with Gemini-style type names and shapes turned into JSON schema."""
    if isinstance(schema, list):
        return [normalize_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, dict):  # {"type": {"type": "ARRAY", ...}}
            out.update(normalize_schema(value))
        elif key == "type" and isinstance(value, str) and value in _TYPES:
            out["type"] = value.lower()
        elif key == "type" and isinstance(value, list):
            out["type"] = [v.lower() if isinstance(v, str) and v in _TYPES else v for v in value]
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {
                name: {"type": prop.lower()} if isinstance(prop, str) and prop in _TYPES else normalize_schema(prop)
                for name, prop in value.items()
            }
        else:
            out[key] = normalize_schema(value)
    return out
