"""A real Prometheus server (Debian's ``prometheus`` package) scraping the platform's targets."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from deploy.local.kafka import free_port


class PrometheusServer:
    """``prometheus`` on a free loopback port, scraping every second the targets tests add
    (``scrape``: file-based discovery), with ``rules`` (a rules file) evaluated every second."""

    def __init__(self, home: Path, rules: Path | None = None):
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (scripts/install.sh --test)")
        self.binary, self.home = binary, home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "cdp",
                    "file_sd_configs": [
                        {"files": [str(home / "targets" / "*.json")], "refresh_interval": "1s"}
                    ],
                }
            ],
        }
        (home / "targets").mkdir(exist_ok=True)
        if rules is not None:
            config["rule_files"] = [str(rules)]
        self.config = home / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = home / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> PrometheusServer:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.home / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).is_success:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def scrape(self, job: str, targets: list[str]) -> None:
        """Scrape ``targets`` (host:port) as ``job`` from now on (an empty list: no more)."""
        groups = [{"targets": targets, "labels": {"job": job}}] if targets else []
        tmp = self.home / "targets" / f".{job}.tmp"
        tmp.write_text(json.dumps(groups))
        tmp.rename(self.home / "targets" / f"{job}.json")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        answer.raise_for_status()
        body = answer.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        found = self.query(promql)
        assert len(found) <= 1, found
        return float(found[0]["value"][1]) if found else None

    def targets_up(self) -> dict[str, str]:
        """Scrape URL -> health of every active target."""
        body = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()
        return {t["scrapeUrl"]: t["health"] for t in body["data"]["activeTargets"]}

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now."""
        body = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        alerts: list[dict[str, Any]] = body["data"]["alerts"]
        return alerts

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
