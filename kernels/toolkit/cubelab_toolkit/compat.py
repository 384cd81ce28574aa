"""What users' notebooks from DeepESDL expect of mlflow, in cubelab's kernels.

`mlflow.pytorch.log_model(model, "model")` with no input example, as ml4xcube's trainer and DeepESDL's notebooks
call it, fails in mlflow 3.17: the default format became `pt2` (torch.export), which needs an example to trace, and
the logged model ends UPLOAD_FAILED. Here the default is `pickle` (mlflow's format before 3.x, which
`mlflow.pytorch.load_model` reads) when no input example and no format are given; with an input example, or a
format named, mlflow decides as before.

Loaded at interpreter start by a `.pth` file that `cubelab up` writes into each kernel's environment (and the
notebook image): `install()` only registers an import hook, so nothing is imported until a notebook imports
`mlflow.pytorch`.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
import sysconfig
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

PTH_NAME = "cubelab-toolkit-compat.pth"
PTH_LINE = "import cubelab_toolkit.compat as _cubelab_compat; _cubelab_compat.install()\n"
_PATCHED = "_cubelab_default_format"


def _pickle_by_default(function: Any) -> Any:
    """function (mlflow.pytorch.save_model or log_model) with serialization_format='pickle' when the call names no
    format, no input example and no export_model (read from the call as function binds it)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = signature.bind_partial(*args, **kwargs).arguments
        if (given.get("serialization_format") is None and given.get("input_example") is None
                and not given.get("export_model")):  # fmt: skip
            kwargs["serialization_format"] = "pickle"
            warnings.warn("cubelab: no input_example, so the model is saved as 'pickle' (pass input_example, or "
                          "serialization_format='pt2', for mlflow 3's torch.export format)", stacklevel=2)  # fmt: skip
        return function(*args, **kwargs)

    setattr(wrapper, _PATCHED, True)
    return wrapper


def patch_pytorch_flavor(module: ModuleType) -> None:
    """mlflow.pytorch's log_model (which decides the format itself) and save_model with pickle as the default when
    there is no example."""
    for name in ("log_model", "save_model"):
        function = getattr(module, name)
        if not getattr(function, _PATCHED, False):
            setattr(module, name, _pickle_by_default(function))


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        patch_pytorch_flavor(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds mlflow.pytorch as the other finders do, and patches it once it has run."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:  # fmt: skip
        if fullname != "mlflow.pytorch":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Register the hook (once); patch at once if mlflow.pytorch is already imported."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if "mlflow.pytorch" in sys.modules:
        patch_pytorch_flavor(sys.modules["mlflow.pytorch"])


def write_pth() -> Path:
    """Write the .pth file that installs the hook at every start of this interpreter's environment."""
    path = Path(sysconfig.get_paths()["purelib"]) / PTH_NAME
    if not path.exists() or path.read_text() != PTH_LINE:
        path.write_text(PTH_LINE)
    return path
