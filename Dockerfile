# tinyserve image: the installed package (weights included) in a venv, run as a non-root user.
#
# Everything is installed from a wheelhouse made on the host (`make wheels`: the project's own wheel in wheels/app/,
# every dependency in wheels/), with --no-index: the build needs no package index, and the torch build is the one the
# host chose (the CPU wheel by default; a CUDA one for a GPU image, see README.md "Deployment").
#
#   make wheels && docker build -t tinyserve .
#   docker build --build-arg BASE_IMAGE=tinyserve-base:bookworm -t tinyserve .   # a local base, no registry
#
# The base must provide python3 (3.11, the wheelhouse's ABI) with the venv module; builder and runtime use the same
# base so the venv's interpreter path is valid in both.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
# Every wheel in the folder is a dependency of the project (or httpx and aiohttp, for the loadtest target below). The
# wheelhouse fixes every version, so there is nothing to pin here. pip compiles the bytecode now, once: at run time
# the root filesystem may be read-only, and every process would compile torch again.
COPY wheels/*.whl /wheels/
# hadolint ignore=DL3013
RUN /opt/venv/bin/pip install --no-index --find-links /wheels /wheels/*.whl \
 && /opt/venv/bin/pip install --no-index --find-links /wheels --target /opt/loadtest-libs httpx aiohttp

FROM ${BASE_IMAGE} AS runtime
# A fixed uid/gid (10001), outside the range of system accounts: Kubernetes' runAsUser names it.
RUN groupadd --gid 10001 tinyserve \
 && useradd --uid 10001 --gid tinyserve --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tinyserve
# The dependencies (about 1 GB) are one layer that stays cached while only the project changes.
COPY --from=builder /opt/venv /opt/venv
# The project (code and weights, about 10 MB) in layers of its own; pip check confirms the dependencies it declares
# are all there, and the import that every piece loads.
COPY wheels/app/*.whl /tmp/app/
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --no-deps /tmp/app/*.whl \
 && rm -rf /tmp/app \
 && /opt/venv/bin/pip check --disable-pip-version-check \
 && PYTHONDONTWRITEBYTECODE=1 /opt/venv/bin/python -c "import service.runtime.lifecycle"
# HF_HOME and the metrics directory live under /tmp: the root filesystem may be mounted read-only (Kubernetes),
# and /tmp is then an emptyDir. PYTHONDONTWRITEBYTECODE: pip compiled everything; nothing to write at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TINYSERVE_HOST=0.0.0.0 \
    TINYSERVE_PORT=8000
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# /health is 503 until every worker has loaded its model: start-period covers loading on a slow machine.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD ["python", "-m", "service.healthcheck"]
# Exec form: the server is PID 1 and receives docker stop's SIGTERM itself; it drains (TINYSERVE_SHUTDOWN_GRACE_SECONDS,
# 5 s by default) and exits 0 well within the 10 s before docker's SIGKILL.
STOPSIGNAL SIGTERM
CMD ["tinyserve"]

# `docker build --target loadtest`: the runtime image plus httpx, aiohttp and bench/, for compose's loadtest profile:
# `docker run IMAGE --url http://HOST:8000 --allow-remote --concurrency 8` (the arguments of `python -m bench`).
FROM runtime AS loadtest
COPY --from=builder /opt/loadtest-libs /opt/loadtest-libs
COPY bench/ /app/bench/
ENV PYTHONPATH=/opt/loadtest-libs
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m", "bench"]
CMD ["--help"]

# The default target (the last stage): the server.
FROM runtime
