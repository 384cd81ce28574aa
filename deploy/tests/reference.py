"""Reference data from ../shared/reference (the zero-to-jupyterhub values schema, the packaged charts), which a
user's clone outside the workplace does not have. Missing, a test fails, unless CUBELAB_WITHOUT_SHARED=1 says to
skip what needs it: a check that quietly skips is a check that can pass while checking nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SKIP_VARIABLE = "CUBELAB_WITHOUT_SHARED"


def require(*paths: Path) -> None:
    """Fail (or, with CUBELAB_WITHOUT_SHARED=1, skip) when any of paths is missing."""
    missing = [str(p) for p in paths if not p.exists()]
    if not missing:
        return
    message = f"reference data missing: {', '.join(missing)} (../shared/reference of the workplace)"
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{message}; {SKIP_VARIABLE}=1 says to skip")
    pytest.fail(f"{message}; set {SKIP_VARIABLE}=1 to skip the tests that need it")
