"""`make gpu-check`: the `cuda` tests, the engine and serving benchmarks on the GPU, one Markdown report.

Made for a GPU host lent for minutes, starting bare and reaching no network: one command, well under 10 minutes.
It installs the wheels `make gpu-wheels` collected (gpu-wheels/, for Python 3.12) into a temporary folder put first
on PYTHONPATH, uses the image's own torch, then runs each step in a subprocess with a time limit:

1. `pytest tests/gpu/test_cuda.py -m cuda` on the device;
2. `python -m bench.engine` on the device (batch 1, 32, 128, 256: tokens/s and the step time split);
3. `python -m bench.serve` with TINYSERVE_ACCELERATOR set (1, 32, 128 clients).

The report goes to $OUT/gpu-check.md when OUT is set (each step's log beside it), else to stdout. Without CUDA it
runs the same steps on the CPU at the smallest sizes and says so: a rehearsal, whose figures say nothing of a GPU.
Standard library only: it runs before the wheels are installed. The exit status is 1 when any step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The modules the server needs that a bare GPU image lacks; when all import, no wheel is installed.
NEEDED = ("litserve", "fastapi", "pydantic_settings", "zmq", "uvicorn")
PROBE = """
import json, platform, torch, transformers
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda": cuda,
    "cuda_runtime": torch.version.cuda, "transformers": transformers.__version__,
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
}))
"""


@dataclass(frozen=True)
class Sizes:
    engine_batches: str
    engine_repeats: int
    serve_levels: str
    serve_requests_per_slot: int
    serve_max_tokens: int
    timeouts_s: tuple[float, float, float]  # tests, engine, serve


# The GPU's sizes take a few minutes, and its time limits add up to under the host's 10 minutes a command, so the
# report is written whatever hangs. The CPU's sizes are the smallest that exercise every path, its limits generous
# (a busy 2-core machine takes minutes to start a server).
SIZES = {
    "cuda": Sizes("1,32,128,256", 3, "1,32,128", 5, 64, (200, 120, 180)),
    "cpu": Sizes("1,4", 1, "1,4", 2, 16, (900, 300, 600)),
    "quick": Sizes("1", 1, "1", 1, 8, (300, 120, 300)),
}


@dataclass
class Step:
    name: str
    title: str
    argv: list[str]
    timeout_s: float
    env: dict[str, str]
    rc: int | None = None  # None: timed out
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""

    @property
    def passed(self) -> bool:
        return self.rc == 0


def python_env(site: Path | None) -> dict[str, str]:
    """The environment of every step: the wheels' folder, then the working tree, before what was there."""
    paths = [str(p) for p in (site, REPO) if p is not None]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def install_wheels(wheels: Path) -> tuple[Path | None, str]:
    """Install `wheels`/*.whl into a temporary folder unless the interpreter already has every needed module."""
    probe = subprocess.run([sys.executable, "-c", f"import {', '.join(NEEDED)}"], capture_output=True)
    if probe.returncode == 0:
        return None, f"this interpreter has {', '.join(NEEDED)} already: no wheel installed"
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise SystemExit(f"{', '.join(NEEDED)} missing and no wheels in {wheels}: run `make gpu-wheels` first")
    site = Path(tempfile.mkdtemp(prefix="tinyserve-site-"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
    subprocess.run(cmd + ["--no-cache-dir", "--target", str(site), *map(str, found)], check=True)
    return site, f"{len(found)} wheels from `{wheels.name}/` installed into a temporary folder, first on PYTHONPATH"


def steps(device: str, sizes: Sizes, env: dict[str, str], args: argparse.Namespace, junit: Path) -> list[Step]:
    py = sys.executable
    test_env = {**env, "TINYSERVE_TEST_DEVICE": device}
    pytest = [py, "-m", "pytest", "tests/gpu/test_cuda.py", "-m", "cuda", "-rA", "-q", "-p", "no:cacheprovider"]
    pytest += [f"--junitxml={junit}", *args.pytest_args]
    engine = [py, "-m", "bench.engine", "--device", device, "--batches", sizes.engine_batches]
    engine += ["--repeats", str(sizes.engine_repeats), "--budget", "60"]
    serve = [py, "-m", "bench.serve", "--concurrency", sizes.serve_levels, "--repeat", "1"]
    serve += ["--requests-per-slot", str(sizes.serve_requests_per_slot), "--max-tokens", str(sizes.serve_max_tokens)]
    serve += ["--set", f"accelerator={device}"] + (["--url", args.url] if args.url else [])
    limits = sizes.timeouts_s
    return [
        Step("tests", f"`cuda` tests on {device}", pytest, limits[0], test_env),
        Step("engine", f"bench.engine on {device}", engine, limits[1], env),
        Step("serve", f"bench.serve with TINYSERVE_ACCELERATOR={device}", serve, limits[2], env),
    ]


def run(step: Step) -> Step:
    """Run the step in a process group of its own, so that a timeout also ends the servers it started."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        step.argv, cwd=REPO, env=step.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=step.timeout_s)
        step.rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[timed out after {step.timeout_s:.0f} s]".encode()
    step.stdout, step.stderr = _text(out), _text(err)
    step.seconds = time.monotonic() - t0
    return step


def _text(data: bytes) -> str:
    return data.decode(errors="replace")


def junit_rows(junit: Path) -> list[str]:
    """One Markdown row per test of pytest's JUnit XML: its name, outcome, seconds and why (skips, failures)."""
    if not junit.exists():
        return ["| (no test report: pytest did not finish) | | | |"]
    rows = []
    for case in ET.parse(junit).iter("testcase"):
        outcome, why = "passed", ""
        for tag in ("failure", "error", "skipped"):
            if (node := case.find(tag)) is not None:
                message = node.get("message") or ""
                outcome, why = tag, message.splitlines()[0][:160] if message else ""
        rows.append(f"| `{case.get('name')}` | {outcome} | {float(case.get('time') or 0):.1f} | {why} |")
    return rows


def bench_text(step: Step) -> list[str]:
    """What a benchmark printed, less its progress lines; headings moved under the report's."""
    lines = []
    for line in step.stdout.splitlines():
        if line.startswith("["):
            continue
        lines.append("###" + line[1:] if line.startswith("# ") else line)
    return lines


def report(device: str, quick: bool, env_info: dict[str, object], install: str, done: list[Step], junit: Path) -> str:
    rehearsal = device != "cuda"
    lines = ["# GPU check", ""]
    if rehearsal:
        lines += [
            f"**No CUDA device: the CPU rehearsal** ({'quick' if quick else 'smallest sizes'}). These figures say",
            "nothing of a GPU; they show that every step runs.",
            "",
        ]
    lines += [
        f"- Device: {env_info.get('gpu') or 'CPU'}"
        + (f", {env_info['gpu_memory_gib']} GiB, CUDA {env_info['cuda_runtime']}" if env_info.get("gpu") else ""),
        f"- Python {env_info['python']}, torch {env_info['torch']}, transformers {env_info['transformers']}",
        f"- Packages: {install}",
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs",
        "",
        "| step | result | seconds |",
        "|---|---|---:|",
    ]
    for s in done:
        result = "passed" if s.passed else ("TIMED OUT" if s.rc is None else f"FAILED (exit {s.rc})")
        lines.append(f"| {s.title} | {result} | {s.seconds:.0f} |")
    lines += ["", "## Tests", "", "| test | outcome | seconds | why |", "|---|---|---:|---|", *junit_rows(junit)]
    for s in done:
        if s.name != "tests":
            lines += ["", f"## {s.title}", "", *bench_text(s)]
    for s in done:
        if not s.passed:
            tail = (s.stdout + s.stderr)[-4000:]
            lines += ["", f"## {s.title}: the end of its output", "", "```", tail, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: CUDA where there is one")
    p.add_argument("--quick", action="store_true", help="the smallest run of every step (what the test suite runs)")
    p.add_argument("--wheels", type=Path, default=REPO / "gpu-wheels", help="wheels to install when modules lack")
    p.add_argument("--out", type=Path, default=None, help="folder for the report and logs (default: $OUT, else stdout)")
    p.add_argument("--url", default=None, help="bench.serve measures this running server instead of starting one")
    p.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[], help="the rest goes to pytest (e.g. -k)")
    args = p.parse_args(argv)
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)

    site, install = install_wheels(args.wheels)
    env = python_env(site)
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    env_info = json.loads(probe.stdout)
    device = args.device if args.device != "auto" else ("cuda" if env_info["cuda"] else "cpu")
    if device == "cuda" and not env_info["cuda"]:
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    sizes = SIZES["quick" if args.quick else device]
    with tempfile.TemporaryDirectory(prefix="tinyserve-gpu-check-") as tmp:
        junit = Path(tmp) / "tests.xml"
        done = []
        for step in steps(device, sizes, env, args, junit):
            print(f"gpu-check: {step.title} ...", file=sys.stderr, flush=True)
            done.append(run(step))
            print(f"gpu-check: {step.title}: exit {step.rc}, {step.seconds:.0f} s", file=sys.stderr, flush=True)
        text = report(device, args.quick, env_info, install, done, junit)
    if out is None:
        print(text)
    else:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu-check.md").write_text(text)
        for s in done:
            (out / f"gpu-check-{s.name}.log").write_text(s.stdout + s.stderr)
        print(f"gpu-check: report in {out / 'gpu-check.md'}", file=sys.stderr)
    return 0 if all(s.passed for s in done) else 1


if __name__ == "__main__":
    sys.exit(main())
