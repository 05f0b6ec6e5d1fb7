"""Settings: defaults, TINYSERVE_ environment variables, and failing fast on bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.settings import WEIGHTS_DIR, Settings


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.pixels_dir == WEIGHTS_DIR / "pixels"
    assert settings.gpt_dir == WEIGHTS_DIR / "gpt"
    assert settings.accelerator == "auto"
    assert isinstance(settings.max_payload_size, int)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINYSERVE_PORT", "9123")
    monkeypatch.setenv("TINYSERVE_CLASSIFY_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("TINYSERVE_CLASSIFY_MAX_QUEUE_SIZE", "9")
    settings = Settings()
    assert (settings.port, settings.classify_max_batch_size, settings.classify_max_queue_size) == (9123, 8, 9)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("port", "80"),
        ("port", "70000"),
        ("host", "localhost"),
        ("classify_max_batch_size", "0"),
        ("classify_batch_timeout", "-1"),
        ("api_servers", "0"),
        ("accelerator", "tpu"),
        ("max_payload_size", "1MB"),
        ("log_level", "loud"),
        ("pixels_dir", "/nonexistent/pixels"),
    ],
)
def test_bad_values_fail(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(f"TINYSERVE_{name.upper()}", value)
    with pytest.raises(ValidationError, match=name):
        Settings()


def test_batch_timeout_must_be_below_request_timeout() -> None:
    with pytest.raises(ValidationError, match="request_timeout"):
        Settings(classify_batch_timeout=0.5, request_timeout=0.5)


def test_cli_help_and_bad_flag() -> None:
    help_run = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "--port" in help_run.stdout and "TINYSERVE_" in help_run.stdout
    bad = subprocess.run([sys.executable, "-m", "service", "--port", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "port" in bad.stderr
