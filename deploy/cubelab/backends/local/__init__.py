"""The embedded backend: every service as a local process under the state directory (`stack.LocalBackend`).

Import the module you need (`cubelab.backends.local.stack`): this package imports nothing itself, so that a
module taking one name from `accounts` does not load the whole stack (deploy/tests/test_boundaries.py).
"""
