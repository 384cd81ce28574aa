"""docs/configuration.md is generated from the two schemas; every setting has a description, and the defaults
the schema states are the ones the code applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cubelab import configdoc
from cubelab.config import parse, schema

ROOT = Path(__file__).resolve().parents[2]
# Schema paths whose dataclass field has another name.
ALIASES = {"containers.profiles.cpu": "containers.cpu_profile", "containers.profiles.gpu": "containers.gpu_profile"}


def test_every_setting_has_a_description() -> None:
    assert configdoc.undocumented() == []


def test_the_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == configdoc.render(), "docs/configuration.md is stale: python -m cubelab.configdoc > it"


def test_a_missing_description_is_found(monkeypatch: Any) -> None:
    doc = schema()
    del doc["properties"]["ports"]["properties"]["tracking"]["description"]
    monkeypatch.setattr(configdoc, "platform_schema", lambda: doc)
    assert configdoc.undocumented() == ["platform: ports.tracking"]


def test_schema_defaults_are_the_codes_defaults() -> None:
    config = parse("users: []\nteams: []\n", Path("/c.yaml"))
    checked = 0
    for key, node in configdoc.settings(schema()):
        if "default" not in node or "[]" in key or key == "state_dir":
            continue
        for prefix, alias in ALIASES.items():
            key = key.replace(prefix, alias)
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part) if value is not None else None
        if value is None:
            continue  # inside an optional section that is absent (containers.postgres)
        assert (list(value) if isinstance(value, tuple) else value) == node["default"], key
        checked += 1
    assert checked >= 15
