"""The production compose file (docker-compose.yml) and its configs under deploy/, checked in CI.

First against the compose specification's JSON schema (vendored by `check-jsonschema`, a dev
dependency), then for what a schema cannot say: every dependency names a service and waits
for a condition that service can meet; the API runs replicated behind the load balancer and
beat runs once; vLLM and the training worker reserve a GPU; vLLM loads LoRA adapters at
runtime from the paths the registry stores; every URL in the services' environment names a
service on the port it listens on; Prometheus scrapes every API replica and alerts only on
metrics the API exports.
"""

from __future__ import annotations

import re
import subprocess
import sys
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
# Services that run until stopped (migrate is a one-shot step) and are worth a healthcheck.
HEALTHCHECKED = ("postgres", "redis", "vllm", "api", "worker", "promoter")


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail(f"{CHECK_JSONSCHEMA} missing: install the dev dependencies (make install)")
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _flag(command: list[str], name: str) -> str | None:
    """The value of `--name value` or `--name=value` in an argument list."""
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _depends(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):  # the short form waits for the start only
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def _app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services running the project's image (an `ospo` command)."""
    return {n: s for n, s in services.items() if s.get("command", [""])[0] == "ospo"}


def _app_env(services: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    (env_file,) = {s["env_file"] for s in _app_services(services).values()}
    return dotenv_values(ROOT / env_file)


def _gpus(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in devices.get("devices", []) if "gpu" in d.get("capabilities", [])]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """{target path in the container: source (volume name or host path)} of short-form mounts."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def test_the_compose_file_follows_the_compose_spec(tmp_path: Path) -> None:
    checked = _validate(COMPOSE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The validator does reject what the specification forbids: here a misspelt key.
    text = COMPOSE.read_text()
    broken = text.replace(
        "\nservices:\n", "\nservices:\n  typo:\n    image: x\n    replica: 2\n", 1
    )
    assert broken != text
    (tmp_path / "docker-compose.yml").write_text(broken)
    refused = _validate(tmp_path / "docker-compose.yml")
    assert refused.returncode != 0 and "'replica' was unexpected" in refused.stdout, refused.stdout


def test_every_dependency_names_a_service_and_a_condition_it_can_meet(
    services: dict[str, dict[str, Any]],
) -> None:
    graph = {}
    for name, service in services.items():
        deps = _depends(service)
        graph[name] = set(deps)
        for dep, spec in deps.items():
            assert dep in services and dep != name, f"{name} depends on unknown {dep!r}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot step"
    order = list(TopologicalSorter(graph).static_order())  # CycleError on a loop
    assert order.index("migrate") < order.index("api")
    for name in HEALTHCHECKED:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    # Everything that uses the database starts after the migrations.
    for name in _app_services(services):
        if name != "migrate":
            assert _depends(services[name]).get("migrate", {}).get("condition") == (
                "service_completed_successfully"
            ), name


def test_the_api_is_replicated_behind_the_load_balancer_and_beat_runs_once(
    services: dict[str, dict[str, Any]],
) -> None:
    api = services["api"]
    assert api["deploy"]["replicas"] >= 2
    # Replicas cannot share a host port or a container name: the load balancer is the door.
    assert "ports" not in api and "container_name" not in api
    port = _flag(api["command"], "--port")
    assert _flag(api["command"], "--host") == "0.0.0.0"
    lb = services["lb"]
    caddyfile = ROOT / _mounts(lb)["/etc/caddy/Caddyfile"]
    upstream = re.search(r"dynamic a (\S+) (\d+)", caddyfile.read_text())
    assert upstream is not None and upstream.groups() == ("api", port)
    assert any(p.endswith(":8000") for p in lb["ports"])
    assert _depends(lb)["api"]["condition"] == "service_healthy"
    # Two beats would queue every scheduled training and refresh twice.
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_vllm_and_the_training_worker_reserve_a_gpu(services: dict[str, dict[str, Any]]) -> None:
    for name in ("vllm", "worker"):
        assert _gpus(services[name]), f"{name} reserves no GPU"
    for name in ("api", "promoter", "beat", "migrate"):
        assert not _gpus(services[name]), f"{name} holds a GPU it does not use"
    # The training worker's image carries CUDA torch; the others the CPU wheels.
    assert "cu" in services["worker"]["build"]["args"]["TORCH_INDEX"]
    assert services["worker"]["image"] != services["api"]["image"]


def test_vllm_loads_adapters_at_runtime_from_the_registry_paths(
    services: dict[str, dict[str, Any]],
) -> None:
    from service.domain import BASE_ADAPTER

    vllm = services["vllm"]
    env = _app_env(services)
    assert str(vllm["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]).lower() in ("true", "1")
    args = vllm["command"]
    assert "--enable-lora" in args
    assert _flag(args, "--served-model-name") == BASE_ADAPTER  # the name the client asks for
    assert _flag(args, "--model") == env["OSPO_POLICY_MODEL"]
    assert int(_flag(args, "--max-lora-rank") or 0) >= int(env["OSPO_VLLM_MAX_LORA_RANK"] or 0)
    # The registry stores <data_dir>/adapters/<name>; vLLM opens that path itself, so it must
    # see the app's data volume at the same place.
    data_dir = env["OSPO_DATA_DIR"]
    assert data_dir is not None
    for name, service in _app_services(services).items():
        assert _mounts(service).get(data_dir) == "ospo-data", name
    assert _mounts(vllm).get(data_dir) == "ospo-data"


def test_every_url_in_the_environment_names_a_service_on_its_port(
    services: dict[str, dict[str, Any]],
) -> None:
    from service.settings import Settings

    env = _app_env(services)
    listening = {
        "postgres": 5432,  # the image's default port
        "redis": int(_flag(services["redis"]["command"], "--port") or 6379),
        "vllm": int(_flag(services["vllm"]["command"], "--port") or 0),
    }
    urls = {k: v for k, v in env.items() if k.endswith("_URL") and v}
    assert {"OSPO_DATABASE_URL", "OSPO_REDIS_URL", "OSPO_BROKER_URL", "OSPO_VLLM_URL"} <= set(urls)
    for key, url in urls.items():
        parts = urlsplit(url)
        assert parts.hostname in services, f"{key} names no service: {url}"
        assert parts.port == listening[parts.hostname], f"{key}: {url}"
    pg = services["postgres"]["environment"]
    db = urlsplit(urls["OSPO_DATABASE_URL"])
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"],
    )  # fmt: skip
    # The broker and the rewrite store share Redis but not a database number.
    assert urlsplit(urls["OSPO_REDIS_URL"]).path != urlsplit(urls["OSPO_BROKER_URL"]).path
    # Every OSPO_ variable is a setting: a misspelt one would be ignored silently.
    known = {f"OSPO_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in env if k.startswith("OSPO_")} - known
    assert not unknown, unknown


def test_prometheus_scrapes_every_api_replica(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    prom = services["prometheus"]
    mounts = _mounts(prom)
    config_path = _flag(prom["command"], "--config.file")
    assert config_path in mounts
    config = yaml.safe_load((ROOT / mounts[config_path]).read_text())
    for rule_file in config["rule_files"]:
        assert rule_file in mounts and (ROOT / mounts[rule_file]).is_file(), rule_file
    api_port = int(_flag(services["api"]["command"], "--port") or 0)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_jobs = [
        job
        for job in jobs.values()
        for sd in job.get("dns_sd_configs", [])
        if "api" in sd["names"] and sd["type"] == "A" and sd["port"] == api_port
    ]
    assert len(api_jobs) == 1, "no job scrapes each API replica (DNS A records of `api`)"
    assert api_jobs[0].get("metrics_path", "/metrics") == "/metrics"
    for job in jobs.values():
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host = target.rsplit(":", 1)[0]
                assert host in services or host == "localhost", target
    # The API serves that path without the admin key (Prometheus sends none).
    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.settings import Settings

    client = TestClient(create_app(Settings(data_dir=tmp_path, policy_backend="none")))
    scraped = client.get("/metrics")
    assert scraped.status_code == 200 and "ospo_searches_total" in scraped.text


def _exported_metric_names() -> set[str]:
    """Sample names the API exposes, from the metric objects of service/observability.py."""
    from prometheus_client.metrics import MetricWrapperBase

    import service.observability as obs

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for metric in vars(obs).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names |= {family.name + s for s in suffixes[family.type]}
    return names


def test_the_alerts_use_metrics_the_api_exports(services: dict[str, dict[str, Any]]) -> None:
    mounts = _mounts(services["prometheus"])
    rules = yaml.safe_load((ROOT / mounts["/etc/prometheus/alerts.yml"]).read_text())
    exported = _exported_metric_names()
    assert "ospo_search_latency_seconds_bucket" in exported  # the derivation above works
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 8
    used = set()
    for alert in alerts:
        assert alert["alert"] and alert["expr"] and alert["annotations"]["summary"], alert
        assert alert["labels"]["severity"] in ("page", "ticket"), alert
        used |= set(re.findall(r"\bospo_[a-z0-9_]+", alert["expr"]))
    assert used and not used - exported, used - exported
