"""Fixtures of the image tests (images/NAME/tests): podman's Docker API for testcontainers and an embedded stack
(real Postgres, S3 and hub) for the images to use, each started once for all of them."""

from __future__ import annotations

from collections.abc import Iterator

import podman_images as containers  # deploy/tests/podman_images.py
import pytest
from scratch import ScratchStacks  # deploy/tests/scratch.py

from cubelab.backends.local.stack import LocalBackend


@pytest.fixture(scope="session")
def podman_api() -> Iterator[str]:
    containers.require_containers()
    with containers.docker_api() as url:
        yield url


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalBackend]:
    """Real Postgres, S3 and hub for the tracking image to use."""
    stacks = ScratchStacks()
    try:
        backend = stacks.backend(stacks.config())
        backend.up()
        yield backend
    finally:
        stacks.close()
