"""`make gpu-wheels`: the wheels a GPU host lacks, for its Python 3.12, into gpu-wheels/ (`python -m bench.gpu_wheels`).

The GPU host's image has torch with CUDA, transformers, numpy, aiohttp and much else (deploy/gpu-image-packages.txt),
but not litserve, fastapi, pydantic-settings, pyzmq and the rest, and the host reaches no network. What to carry is
worked out from this venv: tinyserve's requirements and those of the check (pytest, httpx, ...), followed through
every package the image lacks or has at a version that a requirement refuses (its transformers is older than
tinyserve's floor). Each is carried at the version installed here, the one the tests passed with; torch never is (the
check uses the image's own CUDA build). `python -m bench.gpu_check` installs them on the host into a temporary folder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
IMAGE_LIST = REPO / "deploy" / "gpu-image-packages.txt"
# What bench.gpu_check runs besides the server: the test suite's and the load generator's packages.
CHECK_ROOTS = ("tinyserve", "pytest", "pytest-timeout", "httpx", "psutil", "aiohttp")
# The host's interpreter and platform: Python 3.12 on x86-64 Linux (glibc 2.39: manylinux tags up to 2_39 fit).
PYTHON_VERSION = "3.12"
MARKER_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
NEVER = {"torch": "the image's own CUDA build is used (a CUDA torch is gigabytes, and the host fetches nothing)"}
# Carried although the image has it: its version there is unknown, and pydantic needs a recent one (>= 4.16.0).
ALWAYS = {"typing-extensions"}


@dataclass(frozen=True)
class Carried:
    name: str
    version: str
    why: str


def read_image(path: Path = IMAGE_LIST) -> dict[str, str | None]:
    """The image's packages: canonical name -> version, None where the version is not known."""
    image: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            image[canonicalize_name(name)] = version or None
    return image


def _requirements(dist: metadata.Distribution, extras: frozenset[str]) -> list[Requirement]:
    wanted = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**MARKER_ENV, "extra": e}) for e in extras | {""}):
            wanted.append(req)
    return wanted


def _reason(req: Requirement, wanted_by: str, image: dict[str, str | None], notes: list[str]) -> str | None:
    """Why `req` must be carried, or None when the image's own package will do."""
    dep = canonicalize_name(req.name)
    have = image.get(dep)
    if dep in NEVER:
        if have is not None and not req.specifier.contains(have, prereleases=True):
            notes.append(f"{dep} {have} in the image; {wanted_by} asks {req.specifier}: {NEVER[dep]}")
        return None
    if dep in ALWAYS:
        return f"the image's version is not known; {wanted_by} needs {req.specifier or 'it'}"
    if dep not in image:
        return f"not in the image; needed by {wanted_by}"
    if have is None or req.specifier.contains(have, prereleases=True):
        return None
    return f"the image has {have}; {wanted_by} needs {req.specifier}"


def resolve(image: dict[str, str | None], roots: tuple[str, ...] = CHECK_ROOTS) -> tuple[list[Carried], list[str]]:
    """What to carry (at this venv's versions) and notes on requirements the image's packages miss."""
    carried: dict[str, Carried] = {}
    notes: list[str] = []
    todo = [(Requirement(root), "the check") for root in roots]
    walked: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, wanted_by = todo.pop()
        key, extras = canonicalize_name(req.name), frozenset(req.extras)
        why = _reason(req, wanted_by, image, notes)
        if why is None or (key, extras) in walked:
            continue
        walked.add((key, extras))
        dist = metadata.distribution(req.name)
        if key != "tinyserve":  # the project itself runs from the working tree
            carried.setdefault(key, Carried(key, dist.version, why))
        todo += [(dep, key) for dep in _requirements(dist, extras)]
    return sorted(carried.values(), key=lambda c: c.name), notes


def download(carried: list[Carried], dest: Path) -> None:
    """Binary wheels only, no dependency resolution: exactly the versions listed, for the host's Python."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + [f"{c.name}=={c.version}" for c in carried], check=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=REPO / "gpu-wheels", help="the folder (git-ignored) to fill")
    p.add_argument("--dry-run", action="store_true", help="list what would be carried, download nothing")
    args = p.parse_args(argv)
    carried, notes = resolve(read_image())
    for c in carried:
        print(f"{c.name}=={c.version}  # {c.why}")
    for note in notes:
        print(f"note: {note}")
    if args.dry_run:
        return
    download(carried, args.dest)
    # The list beside the wheels, for whoever reads the folder on the host.
    (args.dest / "carried.txt").write_text("".join(f"{c.name}=={c.version}  # {c.why}\n" for c in carried))
    size = sum(f.stat().st_size for f in args.dest.iterdir())
    print(f"{len(carried)} wheels, {size / 2**20:.1f} MiB in {args.dest}")


if __name__ == "__main__":
    main()
