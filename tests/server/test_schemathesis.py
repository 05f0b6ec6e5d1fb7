"""Hostile input: schemathesis generates requests from the live /openapi.json for every endpoint.

Whatever it sends, the server must answer without a 5xx and within the schema it publishes. The CLI is used
(rather than its pytest plugin, which does not load under this pytest) with a fixed seed and a bounded number of
examples per operation, so the run is repeatable and takes seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def test_no_server_errors_and_responses_follow_the_schema(base_url):
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    out = subprocess.run(
        [
            st, "run", f"{base_url}/openapi.json",
            "--max-examples", "10",
            "--seed", "1",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--request-timeout", "60",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "Tested: " in out.stdout
