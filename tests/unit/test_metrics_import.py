"""service/metrics.py: importing it changes nothing; the server's multiprocess folder holds the samples of every
process and /metrics merges them; without that folder the metrics live in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.values import MutexValue

from service import metrics
from service.metrics import MULTIPROC_ENV

REPO = Path(__file__).resolve().parents[2]

# prometheus_client first: service.metrics used to refuse to load after it.
IMPORT = """
import json, os
import prometheus_client
import service.metrics
print(json.dumps({"env": os.environ.get("PROMETHEUS_MULTIPROC_DIR")}))
"""


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No folder given and a temporary folder of the test's own; this process's metrics built afresh, and again after
    the test (so that none built on a test's folder outlives it)."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    metrics.rebuild()
    yield tmp_path
    metrics.rebuild()


def test_importing_sets_no_variable_and_makes_no_folder(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    env["TMPDIR"] = str(tmp_path)  # where mkdtemp would make its folder
    done = subprocess.run(
        [sys.executable, "-c", IMPORT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"env": None}
    assert list(tmp_path.iterdir()) == []


def test_without_a_folder_metrics_live_in_the_process(in_process: Path) -> None:
    built = metrics.get()
    built.rejected.labels("/v1/classify", "queue_full").inc()
    assert isinstance(built.rejected.labels("/v1/classify", "queue_full")._value, MutexValue)
    assert isinstance(built.gpt_running._value, MutexValue)
    assert MULTIPROC_ENV not in os.environ and list(in_process.iterdir()) == []
    body = bytes(metrics.metrics_endpoint().body).decode()
    assert 'tinyserve_requests_rejected_total{path="/v1/classify",reason="queue_full"} 1.0' in body


def test_first_uses_in_several_threads_build_one_set(in_process: Path) -> None:
    start = threading.Barrier(8)

    def first_use(_: int) -> metrics.Metrics:
        start.wait()
        return metrics.get()

    # On a folder: opening the sample files makes a build slow enough for unguarded threads to meet in it.
    with metrics.multiprocess_folder(), ThreadPoolExecutor(8) as pool:
        assert len({id(built) for built in pool.map(first_use, range(8))}) == 1


def test_samples_land_in_the_folder_made_at_start_and_removed_at_the_end(in_process: Path) -> None:
    with metrics.multiprocess_folder() as folder:
        assert folder.parent == in_process and folder.name.startswith("tinyserve-metrics-")
        assert os.environ[MULTIPROC_ENV] == str(folder)
        metrics.get().rejected.labels("/v1/classify", "queue_full").inc(2)
        metrics.get().gpt_running.set(3)
        assert list(folder.glob("*.db"))
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(folder))
        labels = {"path": "/v1/classify", "reason": "queue_full"}
        assert registry.get_sample_value("tinyserve_requests_rejected_total", labels) == 2
        assert registry.get_sample_value("tinyserve_gpt_requests_running") == 3
        body = bytes(metrics.metrics_endpoint().body).decode()
        assert 'tinyserve_requests_rejected_total{path="/v1/classify",reason="queue_full"} 2.0' in body
    assert not folder.exists() and MULTIPROC_ENV not in os.environ
    assert isinstance(metrics.get().gpt_running._value, MutexValue)  # back in the process


def test_a_given_folder_is_emptied_and_kept(in_process: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = in_process / "given"
    given.mkdir()
    (given / "counter_999999.db").write_bytes(b"left by an earlier server")
    (given / "notes.txt").write_text("not a sample file")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    with metrics.multiprocess_folder() as folder:
        assert folder == given and not (given / "counter_999999.db").exists()
        metrics.get().gpt_prompt_tokens.inc(5)
        assert list(given.glob("*.db"))
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    assert os.environ[MULTIPROC_ENV] == str(given)
