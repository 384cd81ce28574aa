"""benchmarks/gpu_check.py's own logic, no GPU and no training: which frameworks run where, nvidia-smi parsing,
the utilisation summary and sampler thread, the table, and the exit status when no GPU is visible."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_frameworks_run_where_they_import_and_once(gc: ModuleType) -> None:
    assert gc.pick_frameworks("all", ["torch"]) == (["torch"], ["keras"])
    assert gc.pick_frameworks("all", ["torch", "keras"], done=["keras"]) == (["torch"], [])
    assert gc.pick_frameworks("keras", ["torch"]) == ([], ["keras"])
    assert gc.pick_frameworks("torch", [], done=["torch"]) == ([], [])
    with pytest.raises(ValueError, match="framework must be one of"):
        gc.pick_frameworks("jax", ["torch"])


def test_nvidia_smi_lines(gc: ModuleType) -> None:
    assert gc.parse_smi("37, 1024\n") == (37.0, 1024.0)
    assert gc.parse_smi("0, 10\n99, 2048\n", index=1) == (99.0, 2048.0)
    assert gc.parse_smi("0, 10\n", index=1) is None
    assert gc.parse_smi("[N/A], 10\n") is None
    assert gc.parse_smi("") is None


def test_utilisation_summary(gc: ModuleType) -> None:
    summary = gc.summarise_util([(10.0, 500.0), (90.0, 800.0), (30.0, 700.0)])
    assert summary == {"util_samples": 3, "util_median": 30.0, "util_max": 90.0, "mem_peak_mib": 800.0}
    assert gc.summarise_util([])["util_median"] is None


def test_sampler_thread_reads_until_stopped(gc: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    values = iter([(50.0, 100.0), None, (70.0, 300.0)] + [(60.0, 200.0)] * 1000)

    def fake_open(self: Any) -> None:
        self.backend, self._read = "fake", lambda: next(values)

    monkeypatch.setattr(gc.UtilSampler, "_open", fake_open)
    with gc.UtilSampler(interval=0.005) as sampler:
        deadline = time.monotonic() + 5
        while len(sampler.readings) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    count = len(sampler.readings)
    time.sleep(0.05)
    assert len(sampler.readings) == count >= 3  # stopped with the `with`; the None reading was skipped
    summary = sampler.summary()
    assert summary["util_backend"] == "fake" and summary["util_max"] == 70.0 and summary["mem_peak_mib"] == 300.0


def test_table_rows(gc: ModuleType) -> None:
    row = {"framework": "torch", "version": "2.11", "device_name": "NVIDIA H200", "batch_size": 1024, "epochs": 3,
           "samples_per_s": 1234567.8, "wall_s": 12.34, "util_median": 41.0, "util_max": 77.0, "mem_peak_mib": 1500.0,
           "cpu": {"samples_per_s": 617283.9}, "gpu_vs_cpu": 2.0}  # fmt: skip
    text = gc.table([row, {**row, "cpu": None, "gpu_vs_cpu": None, "util_median": None, "util_max": None}])
    lines = text.splitlines()
    assert len(lines) == 4
    assert "| 1,234,568 | 617,284 | 2.00 | 41 / 77 | 1,500 | 12.3 |" in lines[2]
    assert "| 1,234,568 | - | - | - / - |" in lines[3]


def test_no_gpu_fails_unless_allowed(gc: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def runner(size: Any, args: Any) -> dict[str, Any]:
        gc._no_gpu("torch", "none here", args)
        return {"framework": "torch", "version": "x", "device_name": "cpu", "batch_size": args.batch_size,
                "epochs": size.epochs, "samples_per_s": 1.0, "wall_s": 1.0}  # fmt: skip

    monkeypatch.setattr(gc, "importable_frameworks", lambda: ["torch"])
    monkeypatch.setitem(gc.RUNNERS, "torch", runner)
    out = tmp_path / "r.json"
    assert gc.main(["--framework", "torch", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["errors"] == ["no GPU visible to torch: none here"] and report["results"] == []
    assert gc.main(["--framework", "torch", "--allow-cpu", "--epochs", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == [] and report["results"][0]["epochs"] == 1
    # Asked for by name but not importable here: an error, not a silent skip.
    assert gc.main(["--framework", "keras", "--allow-cpu", "--out", str(out)]) == 1
    assert "keras: tensorflow does not import" in json.loads(out.read_text())["errors"][0]
