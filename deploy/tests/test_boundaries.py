"""The control plane runs on deploy/pyproject.toml's own dependencies.

`cubelab` (cli, plan, config, the backends) must never load code that runs inside a service: the tracking
middleware, the gateway's front and backends, the hub's configuration, nor their libraries (mlflow, starlette,
httpx, jupyterhub, dask_gateway_server). The check walks imports in the source (an AST walk, import-linter's idea
without its dependency): from `cubelab.cli`, every import a command may execute, module-level and inside
functions alike, since `cubelab render helm` loads its backend lazily. A second test builds a venv from
deploy/pyproject.toml alone and runs the commands an operator runs first.
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1]
ROOT = DEPLOY.parent
PACKAGE = "cubelab"

# The control plane's entry points: what the `cubelab` command and the targets' renderers are made of.
ENTRY_POINTS = ("cubelab.cli", "cubelab.plan", "cubelab.config", "cubelab.backends.compose",
                "cubelab.backends.kubernetes", "cubelab.backends.local.stack")  # fmt: skip
# Service code: imported only by the environment that runs the service. hub.render is names and URLs only.
SERVICE_PACKAGES = ("cubelab.tracking", "cubelab.gateway", "cubelab.hub")
SERVICE_ALLOWED = frozenset({"cubelab.tracking", "cubelab.gateway", "cubelab.hub", "cubelab.hub.render"})
# Named in issue 24: the libraries whose absence broke a fresh machine's first command.
SERVICE_LIBRARIES = frozenset({"mlflow", "starlette", "httpx", "jupyterhub", "dask_gateway_server", "flask",
                               "traitlets", "tornado", "uvicorn", "websockets", "dask", "distributed"})  # fmt: skip
# deploy/pyproject.toml's dependencies, by the module names they install (botocore comes with boto3).
IMPORT_NAMES = {"PyYAML": {"yaml"}, "jsonschema": {"jsonschema"}, "psutil": {"psutil"},
                "psycopg2-binary": {"psycopg2"}, "boto3": {"boto3", "botocore"}, "uv": {"uv"}}  # fmt: skip


def declared_dependencies(pyproject: Path = DEPLOY / "pyproject.toml") -> set[str]:
    names = set()
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        for stop in "<>=!~[; ":
            requirement = requirement.split(stop)[0]
        names.add(requirement)
    return names


@dataclass
class ImportGraph:
    """Imports of a source tree's package, read from the AST: no module is executed."""

    source: Path  # the folder holding the package
    edges: dict[str, set[str]] = field(default_factory=dict)

    def file_of(self, module: str) -> Path | None:
        path = self.source.joinpath(*module.split("."))
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
        return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None

    def imports(self, module: str, *, module_level_only: bool = False) -> set[str]:
        """What `module` imports: absolute names, `from a import b` as a.b when b is a module. Imports under
        `if TYPE_CHECKING:` never run and are left out."""
        path = self.file_of(module)
        assert path is not None, module
        tree = ast.parse(path.read_text(), str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found: set[str] = set()
        for node in _import_nodes(list(tree.body), module_level_only):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if self.file_of(f"{base}.{a.name}")}
        return found

    def closure(self, start: str, *, module_level_only: bool = False) -> tuple[dict[str, str], dict[str, str]]:
        """The package's modules loaded from `start` and the outside modules they import, each with the module
        that first brought it in (to name the chain in a failure)."""
        inside: dict[str, str] = {start: ""}
        outside: dict[str, str] = {}
        todo = [start]
        while todo:
            module = todo.pop()
            parts = module.split(".")
            parents = {".".join(parts[:i]) for i in range(1, len(parts))}  # importing a.b.c runs a and a.b
            for name in sorted(parents | self.imports(module, module_level_only=module_level_only)):
                if name.split(".")[0] != PACKAGE:
                    outside.setdefault(name.split(".")[0], module)
                elif name not in inside and self.file_of(name):
                    inside[name] = module
                    todo.append(name)
        return inside, outside


def _import_nodes(nodes: list[ast.AST], module_level_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements among nodes and the statements nested in them, but not under `if TYPE_CHECKING:` (never
    run) and, with module_level_only, not in function bodies."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out += _import_nodes(list(node.orelse), module_level_only)
        elif not (module_level_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)):
            children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt | ast.excepthandler)]
            out += _import_nodes(children, module_level_only)
    return out


def chain(found: dict[str, str], name: str, via: str) -> str:
    """a -> b -> c: how the entry point reached `name`."""
    links = [name, via]
    while found.get(links[-1]):
        links.append(found[links[-1]])
    return " -> ".join(reversed(links))


def violations(source: Path, entry_points: tuple[str, ...] = ENTRY_POINTS) -> list[str]:
    """Every way the control plane reaches service code or a library it does not declare."""
    graph = ImportGraph(source)
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    allowed |= {name for dep in declared_dependencies() for name in IMPORT_NAMES[dep]}
    found: set[str] = set()
    for entry in entry_points:
        inside, outside = graph.closure(entry)
        for module, via in inside.items():
            if module.startswith(SERVICE_PACKAGES) and module not in SERVICE_ALLOWED:
                found.add(f"service code {module}: {chain(inside, module, via)}")
        for library, via in outside.items():
            if library in SERVICE_LIBRARIES or library not in allowed:
                found.add(f"{library} (not a control-plane dependency): {chain(inside, library, via)}")
    return sorted(found)


def package_init_violations(source: Path) -> list[str]:
    """A package __init__ that imports its own package's modules makes every submodule load them all."""
    graph, found = ImportGraph(source), []
    for init in sorted((source / PACKAGE).rglob("__init__.py")):
        package = ".".join(init.parent.relative_to(source).parts)
        own = {m for m in graph.imports(package, module_level_only=True) if m.startswith(f"{package}.")}
        found += [f"{package}/__init__.py imports {m}" for m in sorted(own)]
    return found


def test_every_dependency_has_its_import_names() -> None:
    assert declared_dependencies() <= set(IMPORT_NAMES), "add the new dependency's module names to IMPORT_NAMES"


def test_the_control_plane_imports_no_service_code_and_no_undeclared_library() -> None:
    assert violations(DEPLOY) == []


def test_package_inits_import_nothing_of_their_package() -> None:
    assert package_init_violations(DEPLOY) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_check_names_the_chain_of_issue_24(tmp_path: Path) -> None:
    """The tree of issue 24, in miniature: cli -> backends.local (its __init__ loads the stack) -> gateway.front
    (httpx), and a renderer loading a backend lazily that imports dask_gateway_server."""
    source = _write(tmp_path, {
        "cubelab/__init__.py": "",
        "cubelab/cli.py": "from cubelab.backends.local import LocalBackend\n"
                          "def render():\n    from cubelab.backends import kubernetes\n",
        "cubelab/backends/__init__.py": "",
        "cubelab/backends/kubernetes.py": "from cubelab.gateway.kubernetes import SETTINGS_VAR\n",
        "cubelab/backends/local/__init__.py": "from cubelab.backends.local.stack import LocalBackend\n",
        "cubelab/backends/local/stack.py": "from cubelab.gateway import front\nclass LocalBackend: ...\n",
        "cubelab/gateway/__init__.py": "",
        "cubelab/gateway/front.py": "import httpx\n",
        "cubelab/gateway/kubernetes.py": "from dask_gateway_server.backends import base\nSETTINGS_VAR = 'X'\n",
    })  # fmt: skip
    found = violations(source, ("cubelab.cli",))
    assert "service code cubelab.gateway.front: cubelab.cli -> cubelab.backends.local -> " \
           "cubelab.backends.local.stack -> cubelab.gateway.front" in found  # fmt: skip
    assert any(f.startswith("httpx (not a control-plane dependency)") for f in found), found
    assert any(f.startswith("dask_gateway_server") and "cubelab.backends.kubernetes" in f for f in found), found
    assert package_init_violations(source) == ["cubelab.backends.local/__init__.py imports "
                                               "cubelab.backends.local.stack"]  # fmt: skip


def test_imports_under_type_checking_are_not_counted(tmp_path: Path) -> None:
    source = _write(tmp_path, {
        "cubelab/__init__.py": "",
        "cubelab/cli.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mlflow\n"
                          "try:\n    import yaml\nexcept ImportError:\n    import starlette\n",
    })  # fmt: skip
    assert violations(source, ("cubelab.cli",)) == [
        "starlette (not a control-plane dependency): cubelab.cli -> starlette"
    ]


# --- the commands themselves, in a venv of deploy/pyproject.toml alone ---------------------------------------------


def control_plane_venv() -> Path:
    """A venv with deploy/pyproject.toml's dependencies only (cubelab editable from this checkout), kept in the
    user's cache per hash of that file, the checkout and the Python, so the test costs seconds after its first run."""
    key = (DEPLOY / "pyproject.toml").read_bytes() + str(DEPLOY).encode() + sys.version.encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cubelab"
    venv = cache / f"control-plane-{digest}"
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is missing: it is a dependency of deploy/pyproject.toml")
    sources = subprocess.run([sys.executable, "-m", "cubelab.locks", "--sources"], capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin/python"), *sources,
                    "-e", str(DEPLOY)], check=True)  # fmt: skip
    (venv / ".complete").touch()
    return venv


def test_operators_first_commands_run_on_the_control_planes_own_dependencies(tmp_path: Path) -> None:
    venv = control_plane_venv()
    python = venv / "bin/python"
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=False).stdout.lower()  # fmt: skip
    for library in ("mlflow", "starlette", "httpx", "jupyterhub", "dask-gateway-server", "pytest"):
        assert f"{library}==" not in listed, f"{library} is in the control plane's venv: the test proves nothing"
    cubelab = venv / "bin/cubelab"
    example = ROOT / "cubelab.example.yaml"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}

    def run(*args: str) -> str:
        done = subprocess.run([str(cubelab), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                              check=False, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"cubelab {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    assert "render" in run("--help")
    assert "valid" in run("-c", str(example), "check")
    assert "wrote" in run("-c", str(example), "render", "compose", "--out", str(tmp_path / "compose"))
    assert (tmp_path / "compose" / "docker-compose.yml").is_file()
    assert "wrote" in run("-c", str(example), "render", "helm", "--out", str(tmp_path / "values.yaml"))
    assert (tmp_path / "values.yaml").is_file()
    for command in ("up", "down", "status", "apply", "describe", "logs", "backup", "restore", "upgrade", "gc"):
        assert "usage:" in run(command, "--help")
