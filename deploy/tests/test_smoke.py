"""`cubelab smoke` runs the README's quickstart snippet: the two stay the same text."""

from __future__ import annotations

import re
from pathlib import Path

from cubelab import smoke

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_smoke_runs_the_readmes_notebook_snippet() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python snippet"
    snippet = smoke.README_SNIPPET.replace(" as run:", ":").rsplit("print(", 1)[0]
    assert snippet == blocks[0]
