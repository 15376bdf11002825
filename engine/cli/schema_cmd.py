"""`liveprism schema [--out schemas/]`: JSON Schemas (draft-07) of the four policy file kinds.

Contract: the schemas are generated from `engine.policy.models.FILE_KINDS` only, so the output is
deterministic (sorted keys, 2-space indent, trailing newline) and the checked-in `schemas/` can be
compared with `render_schemas()`. pydantic's `$defs` become draft-07 `definitions`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.policy.models import FILE_KINDS

DRAFT_07 = "http://json-schema.org/draft-07/schema#"
SCHEMA_BASE_URI = "https://liveprism.example/schemas/"

# FILE_KINDS key -> (schema file name, the policy file it describes)
SCHEMA_FILES: dict[str, tuple[str, str]] = {
    "gateway": ("gateway.schema.json", "gateway.yaml"),
    "tenants": ("tenant.schema.json", "tenants/<name>.yaml"),
    "lists": ("list.schema.json", "lists/<name>.yaml"),
    "rules": ("rules.schema.json", "rules/<name>.yaml"),
}


def render_schemas() -> dict[str, str]:
    """Schema file name -> its JSON text, for every policy file kind."""
    rendered: dict[str, str] = {}
    for kind, model in FILE_KINDS.items():
        file_name, policy_file = SCHEMA_FILES[kind]
        schema = _draft07(model.model_json_schema(by_alias=True, mode="validation"))
        schema["$schema"] = DRAFT_07
        schema["$id"] = SCHEMA_BASE_URI + file_name
        schema["title"] = f"LivePrism {policy_file}"
        rendered[file_name] = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return rendered


def run_schema(out: Path) -> int:
    """Write every schema into `out` (created if needed); return 0."""
    out.mkdir(parents=True, exist_ok=True)
    for file_name, text in render_schemas().items():
        path = out / file_name
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.as_posix()}")
    return 0


def _draft07(node: Any) -> Any:
    """Rename `$defs` to `definitions` and rewrite `#/$defs/X` references, recursively."""
    if isinstance(node, dict):
        converted: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                converted[key] = "#/definitions/" + value.removeprefix("#/$defs/")
            else:
                converted["definitions" if key == "$defs" else key] = _draft07(value)
        return converted
    if isinstance(node, list):
        return [_draft07(item) for item in node]
    return node
