#!/usr/bin/env bash
# make docker-smoke: build the image and check a running container end to end, on a machine with no image registry.
#
# Installs docker.io and debootstrap when missing (apt-get, as root), starts dockerd when no engine answers, builds a
# Debian base image with debootstrap when `tinyserve-base:bookworm` is absent (../shared/notes/docker.md), makes the
# wheelhouse, builds the image, runs it read-only as in Kubernetes, waits for the HEALTHCHECK to say healthy, checks
# /health, a classification, a streamed completion and /metrics, runs the loadtest image against it, then
# `docker stop`s it during a stream: the stream must finish and the container exit 0 within docker's 10 s grace
# period. It skips (exit 0, saying why) only when the engine itself cannot start here; a failed build or check fails
# the run.
#
# Environment: BASE_IMAGE (default tinyserve-base:bookworm; python:3.11-slim where a registry is reachable),
# IMAGE (default tinyserve:smoke), SMOKE_PORT (default 18000), HEALTHY_TIMEOUT_S (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-tinyserve-base:bookworm}
IMAGE=${IMAGE:-tinyserve:smoke}
SMOKE_PORT=${SMOKE_PORT:-18000}
HEALTHY_TIMEOUT_S=${HEALTHY_TIMEOUT_S:-300}
CONTAINER=tinyserve-smoke-$$
WORK=$(mktemp -d /tmp/tinyserve-smoke.XXXXXX)
DOCKERD_PID=""
URL="http://127.0.0.1:${SMOKE_PORT}"

log() { printf '[docker-smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
fail() {
    log "FAIL: $*"
    if docker inspect "$CONTAINER" >/dev/null 2>&1; then
        log "container log (last 60 lines):"
        docker logs --tail 60 "$CONTAINER" 2>&1 || true
    fi
    exit 1
}

cleanup() {
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    if [[ -n "$DOCKERD_PID" ]]; then
        # Only the engine this script started is stopped, by its PID.
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

install_missing() {
    local packages=()
    command -v dockerd >/dev/null || packages+=(docker.io)
    command -v docker >/dev/null || packages+=(docker.io)
    if [[ "$BASE_IMAGE" == tinyserve-base:* ]] && ! command -v debootstrap >/dev/null; then packages+=(debootstrap); fi
    ((${#packages[@]})) || return 0
    [[ $(id -u) == 0 ]] || fail "missing ${packages[*]} and not root: install them first"
    log "installing ${packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}

start_engine() {
    if docker info >/dev/null 2>&1; then
        log "using the running docker engine"
        return
    fi
    log "starting dockerd"
    setsid dockerd >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && { log "dockerd is up (pid $DOCKERD_PID)"; return; }
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 1
    done
    # The one allowed skip: this machine cannot run a container engine at all.
    log "SKIP: the docker engine cannot start on this machine; dockerd's log ends with:"
    tail -n 20 "$WORK/dockerd.log" || true
    DOCKERD_PID=""
    exit 0
}

ensure_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE is present"
        return
    fi
    if [[ "$BASE_IMAGE" != tinyserve-base:* ]]; then
        log "pulling $BASE_IMAGE"
        docker pull "$BASE_IMAGE" || fail "cannot pull $BASE_IMAGE (no registry? leave BASE_IMAGE unset to build one)"
        return
    fi
    # No registry here: a minimal Debian from the Debian mirror, imported as an image. passwd gives useradd, which
    # the Dockerfile needs and debootstrap's minbase leaves out.
    log "building $BASE_IMAGE with debootstrap (a few minutes)"
    local rootfs="$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
        bookworm "$rootfs" >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"*
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "imported $BASE_IMAGE"
}

build_image() {
    log "making the wheelhouse"
    make wheels >"$WORK/wheels.log" 2>&1 || { tail -n 30 "$WORK/wheels.log"; fail "make wheels"; }
    # BuildKit needs the buildx plugin in recent docker clients; without it the classic builder does the same job.
    if docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=1; else export DOCKER_BUILDKIT=0; fi
    log "building $IMAGE on $BASE_IMAGE"
    local start=$SECONDS
    # The builder stage gets a tag of its own: untagged, the prune below would delete it, and with it the cache of
    # the dependency install (a minute or more) for the next run.
    if ! {
        docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" --target builder -t "$IMAGE-builder" . \
            && docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" .
    } >"$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log"
        fail "docker build"
    fi
    log "built in $((SECONDS - start)) s: $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
    # Layers of earlier builds that no tag points to any more.
    start=$SECONDS
    docker image prune -f >/dev/null
    log "pruned old layers in $((SECONDS - start)) s"
}

wait_healthy() {
    local start=$SECONDS status
    while ((SECONDS - start < HEALTHY_TIMEOUT_S)); do
        status=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' "$CONTAINER")
        case "$status" in
            "running healthy") log "healthy after $((SECONDS - start)) s"; return ;;
            running\ *) sleep 2 ;;
            *) fail "container is '$status' before becoming healthy" ;;
        esac
    done
    fail "not healthy after $HEALTHY_TIMEOUT_S s"
}

check_endpoints() {
    local body
    body=$(curl -fsS "$URL/health") || fail "/health"
    [[ "$body" == ok ]] || fail "/health answered '$body'"

    body=$(curl -fsS "$URL/v1/classify" -H 'content-type: application/json' \
        -d '{"pixels": [[-1, 1, -1], [1, 1, 1], [-1, 1, -1]]}') || fail "/v1/classify"
    [[ "$body" == *'"symbol":"plus"'* ]] || fail "/v1/classify answered $body"

    body=$(curl -fsSN --max-time 60 "$URL/v1/completions" -H 'content-type: application/json' \
        -d '{"prompt": "ROMEO.\n", "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}}') \
        || fail "/v1/completions"
    grep -q '"completion_tokens":[1-9]' <<<"$body" && [[ "$body" == *'data: [DONE]'* ]] \
        || fail "streamed completion answered: $body"

    body=$(curl -fsS "$URL/metrics") || fail "/metrics"
    grep -qE '^tinyserve_http_requests_total\{[^}]*path="/v1/classify"[^}]*status="200"\} 1\.0$' <<<"$body" \
        || fail "/metrics does not count the one classify request"
    grep -qE '^tinyserve_gpt_generation_tokens_total [1-9]' <<<"$body" || fail "/metrics counts no generated tokens"

    [[ $(docker exec "$CONTAINER" id -u) != 0 ]] || fail "the server runs as root"
    log "endpoints answered: /health, /v1/classify, streamed /v1/completions, /metrics; non-root user"
    log "memory in use: $(docker stats --no-stream --format '{{.MemUsage}}' "$CONTAINER")"
}

check_loadtest_image() {
    # compose's loadtest profile runs this target: it must drive the server (host network: the URL is loopback).
    local report
    docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" --target loadtest -t "$IMAGE-loadtest" . >>"$WORK/build.log" 2>&1 \
        || { tail -n 40 "$WORK/build.log"; fail "docker build --target loadtest"; }
    report=$(docker run --rm --network host --read-only --tmpfs /tmp "$IMAGE-loadtest" --url "$URL" \
        --concurrency 2 --num-requests 4 --max-tokens 8 --no-progress 2>&1) || fail "the loadtest image: $report"
    grep -qE '^Successful requests: +4$' <<<"$report" || fail "the loadtest image reported: $report"
    log "the loadtest image ran 4 streamed completions against the container"
}

stop_container() {
    local start_ns elapsed_ms code stream_pid
    # A stream in flight when SIGTERM arrives must be allowed to finish (the drain), not be cut off.
    curl -fsSN --max-time 30 "$URL/v1/completions" -H 'content-type: application/json' \
        -d '{"prompt": "KING.\n", "max_tokens": 48, "stream": true, "stream_options": {"include_usage": true}}' \
        >"$WORK/in-flight.txt" 2>&1 &
    stream_pid=$!
    sleep 0.3
    start_ns=$(date +%s%N)
    docker stop "$CONTAINER" >/dev/null
    elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))
    code=$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")
    log "docker stop took ${elapsed_ms} ms, exit code $code"
    # docker stop SIGKILLs after 10 s (exit code 137): a clean drain ends before that with 0.
    [[ "$code" == 0 ]] || fail "exit code $code after docker stop"
    ((elapsed_ms < 10000)) || fail "stop took ${elapsed_ms} ms, past docker's 10 s grace period"
    wait "$stream_pid" || fail "the stream in flight at SIGTERM failed: $(cat "$WORK/in-flight.txt")"
    grep -q 'data: \[DONE\]' "$WORK/in-flight.txt" || fail "the stream in flight at SIGTERM was cut: $(tail -c 300 "$WORK/in-flight.txt")"
    log "the stream in flight at SIGTERM finished: $(grep -o '"completion_tokens":[0-9]*' "$WORK/in-flight.txt")"
    docker logs "$CONTAINER" 2>&1 | tail -n 5 | sed 's/^/    /'
}

install_missing
start_engine
ensure_base_image
build_image
log "running $IMAGE as in Kubernetes: read-only root, /tmp a tmpfs, no capabilities"
docker run -d --name "$CONTAINER" -p "127.0.0.1:${SMOKE_PORT}:8000" \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges "$IMAGE" >/dev/null
wait_healthy
check_endpoints
check_loadtest_image
stop_container
log "PASS"
