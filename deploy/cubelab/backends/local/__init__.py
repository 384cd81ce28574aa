"""The embedded backend: every service as a local process under the state directory."""

from cubelab.backends.local.stack import LocalBackend

__all__ = ["LocalBackend"]
