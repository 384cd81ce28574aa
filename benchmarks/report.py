"""Shared output of the benchmark scripts: a markdown table on stdout and, optionally, the numbers as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def report(rows: list[tuple[str, str, str]], results: dict[str, Any], json_path: Path | None) -> None:
    print("\n| measure | result | target |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {' | '.join(row)} |")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
