"""cubelab_toolkit.compat: a plain `mlflow.pytorch.log_model(model, "model")` works, in a new interpreter with
the hook installed as the kernels' .pth file does; without the hook, mlflow 3.17 refuses the same call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

SAVE = """
import sys, warnings
{hook}
import torch, mlflow.pytorch, mlflow.models
model = torch.nn.Sequential(torch.nn.Linear(3, 1))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    mlflow.pytorch.save_model(model, sys.argv[1])
    if {log}:
        mlflow.set_tracking_uri("sqlite:///" + sys.argv[1] + "-runs.db")
        with mlflow.start_run():
            mlflow.pytorch.log_model(model, "model")  # log_model decides the format itself: patched too
import os
print("+".join(sorted(os.listdir(sys.argv[1] + "/data"))))
print(any("cubelab" in str(w.message) for w in caught))
back = mlflow.pytorch.load_model(sys.argv[1])
x = torch.ones(2, 3)
assert torch.equal(back(x), model(x))
"""
HOOK = "import cubelab_toolkit.compat as c; c.install()"
TOOLKIT = Path(__file__).resolve().parents[1]


def run(code: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(TOOLKIT), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False,
                          env=env, cwd=path.parent)  # fmt: skip


def test_a_model_without_example_is_saved_as_pickle_and_loads_back(tmp_path: Path) -> None:
    done = run(SAVE.format(hook=HOOK, log=True), tmp_path / "model")
    assert done.returncode == 0, done.stderr[-2000:]
    files, warned = done.stdout.split()[-2:]
    assert "model.pth" in files.split("+") and warned == "True"  # pickle; pt2 would be model.pt2


def test_without_the_hook_mlflow_refuses_the_same_call(tmp_path: Path) -> None:
    """What the hook is for: if mlflow's default changes back, this fails and the hook can go."""
    done = run(SAVE.format(hook="", log=False), tmp_path / "model")
    assert done.returncode != 0 and "example" in done.stderr.lower(), done.stderr[-1500:]


def test_an_example_or_a_named_format_is_left_to_mlflow(tmp_path: Path) -> None:
    code = f"""
import sys
{HOOK}
import torch, mlflow.pytorch, mlflow.models
model = torch.nn.Sequential(torch.nn.Linear(3, 1))
mlflow.pytorch.save_model(model, sys.argv[1] + "/a", input_example=torch.ones(2, 3).numpy())
mlflow.pytorch.save_model(model, sys.argv[1] + "/b", serialization_format="pt2", input_example=torch.ones(2, 3).numpy())
import os
for name in "ab":
    print("+".join(sorted(os.listdir(sys.argv[1] + "/" + name + "/data"))))
"""
    done = run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all("model.pt2" in line.split("+") for line in done.stdout.split()[-2:]), done.stdout


def test_the_installer_looks_for_the_file_the_toolkit_writes() -> None:
    from cubelab import install
    from cubelab_toolkit import compat

    assert install.COMPAT_PTH == compat.PTH_NAME
