"""The deployment files (compose, Helm chart, Dockerfile) set only settings the code reads,
with values it accepts, and agree with each other on ports, names and commands.

No Docker engine or Kubernetes cluster is available to run them here: these checks are
static (the compose file parsed with PyYAML, the chart rendered by `helm template`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from deploy.cli import cli
from deploy.settings import Settings, is_setting

ROOT = Path(__file__).parents[3]
COMPOSE = ROOT / "deploy" / "compose" / "docker-compose.yml"
CHART = ROOT / "deploy" / "k8s" / "cdp"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
IMAGES = {"apache/kafka", "redis", "clickhouse/clickhouse-server", "prom/prometheus", "cdp"}


def _interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with nothing set in the shell: the default."""
    return re.sub(r"\$\{[A-Z_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _compose() -> dict[str, Any]:
    return yaml.safe_load(_interpolate(COMPOSE.read_text()))


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("CDP_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.load()


def _command_exists(args: list[str]) -> None:
    """``args`` parse as a `cdp` command line (unknown commands or options fail)."""
    group: click.Group = cli
    command = group.commands[args[0]]
    while isinstance(command, click.Group):
        args = args[1:]
        command = command.commands[args[0]]
    command.make_context(args[0], list(args[1:]), obj=None)


def _cdp_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s["image"].startswith("cdp:")}


def test_every_compose_service_uses_an_official_image() -> None:
    for name, service in _compose()["services"].items():
        assert service["image"].rsplit(":", 1)[0] in IMAGES, name


def test_compose_settings_are_settings_the_code_reads_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = _compose()
    for name, service in _cdp_services(compose).items():
        env = service["environment"]
        assert all(isinstance(v, str) for v in env.values()), name  # compose wants strings
        unknown = [k for k in env if not is_setting(k)]
        assert not unknown, f"{name}: {unknown} set nothing"
        settings = _settings(env, monkeypatch)
        _command_exists(service["command"])
        # Where the other services are, as the compose file names and configures them.
        host, port = settings.kafka.bootstrap_servers.split(":")
        kafka = compose["services"][host]["environment"]
        assert f"PLAINTEXT://{host}:{port}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
        assert "controller" in kafka["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
        redis_host = settings.redis.url.get_secret_value().split("//")[1].split(":")[0]
        redis_command = compose["services"][redis_host]["command"]
        assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
        assert settings.clickhouse.url is not None  # a server: several processes write it
        url = settings.clickhouse.url.get_secret_value()
        ch = compose["services"]["clickhouse"]["environment"]
        assert url == (
            f"http://{ch['CLICKHOUSE_USER']}:{ch['CLICKHOUSE_PASSWORD']}@clickhouse:8123/"
            f"{ch['CLICKHOUSE_DB']}"
        )
        assert settings.clickhouse.database == ch["CLICKHOUSE_DB"]
        assert settings.api.host == settings.metrics.host == "0.0.0.0"  # noqa: S104
        secrets = {s for s in service["secrets"]}
        assert {"cdp-sources", "cdp-master-keys"} <= secrets
        assert str(settings.ingest.sources_file) == "/run/secrets/cdp-sources"


def test_prometheus_scrapes_the_compose_services_where_they_serve_metrics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = _compose()
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j["dns_sd_configs"][0] for j in config["scrape_configs"]}
    api = _settings(compose["services"]["api"]["environment"], monkeypatch)
    assert jobs["cdp-api"] == {"names": ["api"], "type": "A", "port": api.api.port}
    workers = [n for n, s in _cdp_services(compose).items() if s["command"][0] == "worker"]
    assert sorted(jobs["cdp-worker"]["names"]) == sorted(workers)
    for name in workers:
        settings = _settings(compose["services"][name]["environment"], monkeypatch)
        assert jobs["cdp-worker"]["port"] == settings.metrics.port
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def _helm() -> str:
    found = shutil.which("helm") or str(Path.home() / ".cache" / "cdp" / "bin" / "helm")
    assert Path(found).exists(), "helm is missing: scripts/install.sh --test builds it"
    return found


def _rendered(*values: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_helm(), "template", "r1", str(CHART), *values],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_helm_lint_passes() -> None:
    done = subprocess.run(
        [_helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_chart_runs_the_api_and_workers_with_probes_budgets_and_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = _rendered("--set", "workers.stream.replicas=4")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = by[("ConfigMap", "r1-cdp")]["data"]
    secret = by[("Secret", "r1-cdp")]["stringData"]
    env = {**config, **secret}
    deployments = {n: d for (k, n), d in by.items() if k == "Deployment"}
    assert set(deployments) == {
        "r1-cdp-api",
        "r1-cdp-worker-stream",
        "r1-cdp-worker-history",
        "r1-cdp-worker-care",
    }
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["image"].startswith("cdp:")
        assert container["resources"]["requests"]["cpu"], name
        refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
        assert refs == {"r1-cdp"}
        own = {e["name"]: e.get("value", "from-the-pod") for e in container["env"]}
        full = {**env, **own}
        assert all(is_setting(k) for k in full), [k for k in full if not is_setting(k)]
        settings = _settings(full, monkeypatch)
        _command_exists(container["args"])
        labels = deployment["spec"]["selector"]["matchLabels"]
        pdb = by[("PodDisruptionBudget", name)]
        assert pdb["spec"]["selector"]["matchLabels"] == labels
        port = int(pod["containers"][0]["ports"][0]["containerPort"])
        scraped = int(
            deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
        )
        assert scraped == port
        if name == "r1-cdp-api":
            assert port == settings.api.port
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
        else:
            assert port == settings.metrics.port
            assert own["CDP_WORKER__INSTANCE_ID"] == "from-the-pod"
    stream = deployments["r1-cdp-worker-stream"]
    assert stream["spec"]["replicas"] == 4
    assert stream["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "worker", "--role", "identity", "--role", "profiles",
    ]  # fmt: skip
    job = next(d for (k, _), d in by.items() if k == "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


def test_the_chart_takes_an_existing_secret_instead_of_its_own() -> None:
    docs = _rendered("--set", "secrets.existingSecret=cdp-prod")
    assert not [d for d in docs if d["kind"] == "Secret"]
    api = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("api")
    )
    refs = [
        next(iter(r.values()))["name"]
        for r in api["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    ]
    assert "cdp-prod" in refs


def test_the_dockerfile_builds_in_stages_and_runs_as_a_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    copied = set(re.findall(r"^COPY (\w+) \1$", text, re.M))
    packages = {
        p.split("*")[0] for p in re.findall(r'"(\w+)\*"', (ROOT / "pyproject.toml").read_text())
    }
    assert packages <= copied, packages - copied
    assert 'ENTRYPOINT ["cdp"]' in text
