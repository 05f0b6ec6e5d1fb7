"""The GPU check rehearsed on the CPU: its quick run end to end, and the wheels it carries to a GPU host."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from bench.gpu_wheels import PLATFORMS, PYTHON_VERSION, read_image, resolve

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / "gpu-wheels"


@pytest.mark.timeout(900)  # a busy 2-core machine: three subprocesses that each import torch
def test_quick_check_runs_every_step_on_the_cpu(base_url, tmp_path):
    argv = [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick", "--url", base_url]
    argv += ["--out", str(tmp_path), "--pytest-args", "-k", "batch_invariant_in_fp32 and top-k"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=880)
    report = (tmp_path / "gpu-check.md").read_text()
    assert done.returncode == 0, report
    assert "the CPU rehearsal" in report
    steps = [line for line in report.splitlines() if line.startswith("| `cuda` tests") or line.startswith("| bench.")]
    assert len(steps) == 3 and all("| passed |" in line for line in steps), steps
    assert "| `test_seeded_sampling_is_batch_invariant_in_fp32[top-k]` | passed |" in report
    assert "| batch | engine greedy |" in report and "\n| 1 | " in report  # bench.engine's table, batch 1
    assert "| concurrency | server tok/s |" in report  # bench.serve's table
    assert {p.name for p in tmp_path.iterdir()} >= {"gpu-check.md", "gpu-check-tests.log", "gpu-check-serve.log"}


def test_the_wheels_are_what_the_image_lacks():
    carried, notes = resolve(read_image())
    names = {c.name: c for c in carried}
    assert {"litserve", "fastapi", "pydantic-settings", "pydantic-core", "pyzmq", "uvicorn"} <= set(names)
    # In the image: never carried (torch above all), unless a requirement refuses the image's version.
    assert not {"torch", "numpy", "aiohttp", "uvloop", "prometheus-client", "pytest", "tinyserve"} & set(names)
    assert "5.17.0" in names["transformers"].why  # the image's transformers is older than tinyserve's floor
    assert all(c.version == metadata.version(c.name) for c in carried)  # the versions the tests ran with here
    assert any(note.startswith("torch ") for note in notes)


def test_an_image_that_has_the_version_needed_carries_nothing_for_it():
    image = {**read_image(), "transformers": "5.24.0", "litserve": None}
    names = {c.name for c in resolve(image)[0]}
    assert "transformers" not in names and "litserve" not in names
    assert "pyzmq" in names  # still needed by tinyserve itself


@pytest.mark.skipif(not (WHEELS / "carried.txt").exists(), reason="no gpu-wheels/: `make gpu-wheels` makes it")
def test_the_wheelhouse_installs_for_the_hosts_python(tmp_path):
    """What the check does on the host, for its Python 3.12, here: each carried package once, nothing missing."""
    wheels = sorted(str(w) for w in WHEELS.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(tmp_path)]
    cmd += ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + wheels, check=True, capture_output=True)
    installed = {
        d.metadata["Name"].lower().replace("_", "-"): d.version for d in metadata.distributions(path=[str(tmp_path)])
    }
    wanted = {c.name: c.version for c in resolve(read_image())[0]}
    assert installed == wanted, "gpu-wheels/ is out of date: `make gpu-wheels`"
    assert sum(Path(w).stat().st_size for w in wheels) < 48 * 2**20  # the tree that travels must stay under 64 MiB
