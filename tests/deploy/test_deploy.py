"""The deployment files, checked offline: Dockerfile, compose, Kubernetes, Grafana, Prometheus (also live), scripts.

Each check runs the real validator (hadolint, `docker-compose config`, Kubernetes schemas, promtool, shellcheck); the
tools come with the `dev` extra, and promtool with Debian's `prometheus` package, which .ci/run installs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service import healthcheck, metrics
from tests.conftest import REPO, ServerProcess, free_port

K8S_DIR = REPO / "deploy" / "k8s"
K8S_VERSION = "1.33.0"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "tinyserve.json"


def tool(name: str) -> str:
    """The path of a command-line tool: the venv's own first (make test does not activate it), then PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (`make test` installs the dev extra; apt: prometheus, haproxy)")
    return found


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


def exported_series() -> set[str]:
    """Every series name service/metrics.py can export: counters end in _total, histograms in _bucket/_sum/_count."""
    suffixes: dict[str | None, list[str]] = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "gauge": [""],
    }
    return {m._name + s for m in metrics.get().every() for s in suffixes[m._type]}


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


# ---- Dockerfile and scripts ----


def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "Dockerfile", "deploy/haproxy/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_a_healthchecked_non_root_server() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r'^HEALTHCHECK .*CMD \["python", "-m", "service.healthcheck"\]$', text, re.M)
    assert 'CMD ["tinyserve"]' in text  # exec form: the server itself gets docker stop's SIGTERM
    assert "--no-index" in text
    # The last stage is the default target: it must be the server, not the load generator.
    assert text.rstrip().splitlines()[-1] == "FROM runtime"


def test_haproxy_config_is_valid() -> None:
    """The shipped file as HAProxy reads it, replica addresses from the environment: valid, and not one warning."""
    env = {"PATH": "/usr/bin:/bin", "REPLICA_1": "127.0.0.1:18001", "REPLICA_2": "127.0.0.1:18002"}
    text = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    for cfg, valid in ((text, True), (text.replace("conn-failure", "conn-failed"), False)):  # and a typo is caught
        check = [tool("haproxy"), "-c", "-f", "/dev/stdin"]
        result = subprocess.run(check, input=cfg, env=env, capture_output=True, text=True, timeout=30)
        output = result.stdout + result.stderr
        assert (result.returncode == 0 and "WARNING" not in output) is valid, output


def test_shell_scripts_pass_shellcheck() -> None:
    result = run(tool("shellcheck"), "deploy/docker-smoke.sh", ".ci/run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_healthcheck_follows_the_server_settings(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    assert healthcheck.health_url({"TINYSERVE_HOST": "::", "TINYSERVE_PORT": "9000"}) == "http://[::1]:9000/health"
    monkeypatch.setenv("TINYSERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("TINYSERVE_PORT", server.url.rsplit(":", 1)[1])
    assert healthcheck.main() == 0
    monkeypatch.setenv("TINYSERVE_PORT", str(free_port()))  # nothing listens there
    assert healthcheck.main() == 1


# ---- compose ----


def compose_config(*files: str, profile: str | None = None) -> dict[str, Any]:
    args = [tool("docker-compose")] + [a for f in files for a in ("-f", f)]
    args += ["--profile", profile] if profile else []
    result = run(*args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_compose_stack_is_valid_and_waits_for_health() -> None:
    services = compose_config("compose.yaml")["services"]
    assert set(services) == {"tinyserve", "prometheus", "grafana"}  # loadtest only with its profile
    for name in services:
        assert services[name]["healthcheck"]["test"], name
    assert services["prometheus"]["depends_on"]["tinyserve"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    binds = [v["source"] for v in services["grafana"]["volumes"] if v["type"] == "bind"]
    mounts = {Path(source).relative_to(REPO).as_posix() for source in binds}
    assert {"deploy/grafana/provisioning", "deploy/grafana/dashboards"} <= mounts
    assert services["tinyserve"]["read_only"] is True


def test_compose_loadtest_profile_runs_the_load_generator() -> None:
    loadtest = compose_config("compose.yaml", profile="loadtest")["services"]["loadtest"]
    assert loadtest["build"]["target"] == "loadtest"
    assert "--url=http://tinyserve:8000" in loadtest["command"]
    assert loadtest["depends_on"]["tinyserve"]["condition"] == "service_healthy"


def test_compose_replicas_profile_puts_haproxy_in_front_of_the_replicas() -> None:
    services = compose_config("compose.yaml", profile="replicas")["services"]
    haproxy = services["haproxy"]
    (mount,) = haproxy["volumes"]
    assert Path(mount["source"]) == REPO / "deploy" / "haproxy" / "haproxy.cfg" and mount["read_only"]
    assert f'"-f", "{mount["target"]}"]' in (REPO / "deploy" / "haproxy" / "Dockerfile").read_text()
    # The file's default addresses are the replica services, on the port the server listens on.
    cfg = (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    backends = dict(re.findall(r'^\s*server \S+ "\$\{REPLICA_\d-([\w-]+):(\d+)\}"', cfg, re.M))
    assert len(backends) >= 2 and set(backends.values()) == {"8000"}
    for name in backends:
        replica = services[name]
        assert replica["image"] == services["tinyserve"]["image"] and "ports" not in replica, name
        assert replica["healthcheck"] == services["tinyserve"]["healthcheck"] and replica["read_only"], name
        assert haproxy["depends_on"][name]["condition"] == "service_healthy"
    assert "haproxy" not in compose_config("compose.yaml")["services"]  # only with the profile


def test_compose_gpu_override_reserves_a_gpu() -> None:
    tinyserve = compose_config("compose.yaml", "compose.gpu.yaml")["services"]["tinyserve"]
    (device,) = tinyserve["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert tinyserve["environment"]["TINYSERVE_ACCELERATOR"] == "cuda"


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    """The validator is not a rubber stamp: a dependency on a missing service fails."""
    broken = yaml.safe_load((REPO / "compose.yaml").read_text())
    broken["services"]["grafana"]["depends_on"]["nonexistent"] = {"condition": "service_healthy"}
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    result = run(tool("docker-compose"), "-f", "compose.yaml", "config", "-q", cwd=tmp_path)
    assert result.returncode != 0 and "nonexistent" in result.stderr


# ---- Kubernetes ----


def k8s_documents() -> list[dict[str, Any]]:
    """The manifests as kustomize renders them (kubectl kustomize), else the kustomization's resources as written."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        result = run(kubectl, "kustomize", str(K8S_DIR))
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    resources = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"]
    return [d for r in resources for d in yaml.safe_load_all((K8S_DIR / r).read_text()) if d]


def test_k8s_manifests_match_the_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) missing")
    documents = k8s_documents()
    assert {d["kind"] for d in documents} == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"}
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    # And a mistake is caught: an unknown field in the container spec.
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_k8s_pod_probes_drains_and_runs_locked_down() -> None:
    documents = {d["kind"]: d for d in k8s_documents()}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    # The only writable place is the emptyDir at /tmp, and the metrics directory lies in it.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "emptyDir" in pod["volumes"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    # SIGKILL must come after the preStop pause plus the server's own state.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    state = float(documents["ConfigMap"]["data"]["TINYSERVE_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > pause + state


def test_k8s_autoscaler_uses_an_exported_metric() -> None:
    documents = {d["kind"]: d for d in k8s_documents()}
    hpa = documents["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == documents["Deployment"]["metadata"]["name"]
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pod_metrics and set(pod_metrics) <= exported_series()
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"])


def test_k8s_service_keeps_a_client_on_its_pod() -> None:
    service = {d["kind"]: d for d in k8s_documents()}["Service"]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] > 0


def test_k8s_inference_pool_selects_the_pods_and_reads_exported_metrics() -> None:
    """The InferencePool chart's values: the Deployment's pods, on their port, and metric names the server exports."""
    values = yaml.safe_load((K8S_DIR / "inferencepool-values.yaml").read_text())
    pod = {d["kind"]: d for d in k8s_documents()}["Deployment"]["spec"]["template"]
    labels = values["inferencePool"]["modelServers"]["matchLabels"]
    assert labels.items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert values["inferencePool"]["targetPorts"] == [{"number": p["containerPort"]} for p in container["ports"]]
    flags = values["inferenceExtension"]["flags"]
    named = {value for flag, value in flags.items() if flag.endswith("-metric") and value}
    assert {"tinyserve_gpt_requests_waiting", "tinyserve_gpt_requests_running"} <= named <= exported_series()
    # Not applied by `kubectl apply -k`: it needs the Inference Extension's CRDs.
    assert "inferencepool-values.yaml" not in yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"]


# ---- Prometheus and Grafana ----


def test_dashboard_uses_only_exported_metrics() -> None:
    exported = exported_series()
    used = {name for expr in dashboard_exprs() for name in re.findall(r"\btinyserve_[a-z0-9_]+", expr)}
    assert used, "no tinyserve_ series in the dashboard"
    assert used <= exported, f"not exported by service/metrics.py: {sorted(used - exported)}"
    # Every panel asked for in issue 9 is there.
    titles = " | ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"])
    for needed in ("Request rate", "Errors", "Time to first token", "Inter-token", "Tokens per second"):
        assert needed in titles
    for needed in ("Running and waiting", "Decode batch size", "Prefix-cache hit rate", "Classifier batch size"):
        assert needed in titles


def test_dashboard_points_at_the_provisioned_datasource() -> None:
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    uids = {p["datasource"]["uid"] for p in panels if "datasource" in p}
    assert uids == {datasource["uid"]}
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tinyserve.yaml").read_text())["providers"]
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in compose["services"]["grafana"]["volumes"]


def test_prometheus_config_is_valid() -> None:
    result = run(tool("promtool"), "check", "config", "deploy/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def prometheus(server: ServerProcess, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus on loopback, scraping the shared server every second with deploy/prometheus.yml's job."""
    binary = tool("prometheus")
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "tinyserve"]
    job["static_configs"] = [{"targets": [server.url.removeprefix("http://")]}]
    config["scrape_configs"] = [job]
    config["global"]["scrape_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready after 30 s"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    assert response.status_code == 200, f"{promql}: {response.text}"
    return response.json()["data"]["result"]  # type: ignore[no-any-return]


def test_prometheus_scrapes_the_server(prometheus: str, server: ServerProcess) -> None:
    assert httpx.post(f"{server.url}/v1/classify", json={"pixels": [0.0] * 9}).status_code == 200
    completion = {"prompt": "ROMEO.\n", "max_tokens": 4}
    assert httpx.post(f"{server.url}/v1/completions", json=completion, timeout=60).status_code == 200
    wanted = {
        "tinyserve_http_requests_total",
        "tinyserve_gpt_time_to_first_token_seconds_bucket",
        "tinyserve_classify_batch_size_bucket",
        "tinyserve_model_info",
        "tinyserve_build_info",
    }
    deadline = time.monotonic() + 20
    while True:
        names = {r["metric"]["__name__"] for r in query(prometheus, '{__name__=~"tinyserve_.+", job="tinyserve"}')}
        if wanted <= names:
            break
        assert time.monotonic() < deadline, f"missing after 20 s: {sorted(wanted - names)}"
        time.sleep(0.5)
    (up,) = query(prometheus, 'up{job="tinyserve"}')
    assert up["value"][1] == "1"
    classified = query(prometheus, 'sum(tinyserve_http_requests_total{path="/v1/classify", status="200"})')
    assert float(classified[0]["value"][1]) >= 1
    # Every dashboard query is valid PromQL to this Prometheus (Grafana's $__rate_interval stood in for).
    for expr in dashboard_exprs():
        query(prometheus, expr.replace("$__rate_interval", "1m"))
