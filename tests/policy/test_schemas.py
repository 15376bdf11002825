"""schemas/*.schema.json: checked in, generated from the models, draft-07."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.cli.schema_cmd import DRAFT_07, render_schemas, run_schema
from tests.support.processes import REPO

SCHEMAS = REPO / "schemas"
NAMES = ["gateway.schema.json", "list.schema.json", "rules.schema.json", "tenant.schema.json"]


def test_render_produces_the_four_kinds() -> None:
    assert sorted(render_schemas()) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_checked_in_schema_is_up_to_date(name: str) -> None:
    path = SCHEMAS / name
    assert path.is_file(), f"{path} is missing: run `liveprism schema` and commit schemas/"
    assert path.read_text(encoding="utf-8") == render_schemas()[name], (
        f"{path} is stale: run `liveprism schema` and commit schemas/"
    )


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_draft07_shaped(name: str) -> None:
    schema = json.loads(render_schemas()[name])
    assert schema["$schema"] == DRAFT_07
    assert schema["$id"].endswith("/" + name)
    assert "$defs" not in json.dumps(schema)
    for ref in _refs(schema):
        assert ref.startswith("#/definitions/"), ref
        assert ref.removeprefix("#/definitions/") in schema["definitions"], ref


def test_run_schema_writes_deterministic_files(tmp_path: Path) -> None:
    assert run_schema(tmp_path / "out") == 0
    written = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "out").iterdir()}
    assert written == render_schemas()
    assert all(text.endswith("}\n") for text in written.values())


@pytest.mark.parametrize("name", NAMES)
def test_schema_validates_as_draft07(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(render_schemas()[name])
    jsonschema.Draft7Validator.check_schema(schema)


def test_schema_accepts_the_design_examples() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    rules = json.loads(render_schemas()["rules.schema.json"])
    example = {
        "name": "acme-content",
        "rules": [
            {
                "id": "invoice-phish",
                "when": {
                    "any": [
                        {"header": {"name": "Subject", "regex": "(?i)overdue invoice"}},
                        {"not": {"body": {"contains": ["wire transfer"]}}},
                    ]
                },
                "then": {"score": 6.0},
            }
        ],
    }
    jsonschema.Draft7Validator(rules).validate(example)
    bad = {"name": "x", "rules": [{"id": "a", "when": {"heder": {}}, "then": {"score": 1}}]}
    assert list(jsonschema.Draft7Validator(rules).iter_errors(bad))
