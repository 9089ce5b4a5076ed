"""The compose file and the image, checked without a Docker engine: parsed, and tied to code that exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from regimes.supervisor import SERVICES
from shared.domain.config import HMM_KEYS, load_strategy_config
from shared.infra.settings import Settings

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    # Compose substitutes ${VAR:-default}; with nothing set, the default is what a container sees.
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    return {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in env.items()}


def test_every_service_runs_its_own_module(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in SERVICES:
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]
        assert importlib.util.find_spec(f"services.{name}.__main__") is not None


def test_services_start_after_healthy_servers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in SERVICES:
        deps = services[name]["depends_on"]
        assert deps["nats"]["condition"] == "service_healthy"
    for reader in ("state_publisher", "dashboard_api"):
        assert services[reader]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["nats"]
    assert "healthcheck" in services["redis"]


def test_service_environment_is_settings_the_code_reads(compose: dict[str, Any], tmp_path: Path) -> None:
    known = set(Settings.ENV_KEYS) | set(HMM_KEYS)
    for name in SERVICES:
        env = _env(compose["services"][name])
        assert set(env) <= known, f"{name} sets variables no code reads: {set(env) - known}"
        # The container path maps onto ./config through the volume.
        volumes = compose["services"][name]["volumes"]
        assert "./config:/app/config:ro" in volumes
        env["STRATEGY_CONFIG"] = str(ROOT / "config" / Path(env["STRATEGY_CONFIG"]).name)
        settings = Settings.from_env(env)
        assert settings.nats_url == "nats://nats:4222"
        load_strategy_config(settings.strategy_config, env)


def test_dashboard_is_published_and_healthchecked(compose: dict[str, Any]) -> None:
    api = compose["services"]["dashboard_api"]
    env = _env(api)
    assert env["API_HOST"] == "0.0.0.0"
    assert f"{env['API_PORT']}:{env['API_PORT']}" in api["ports"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_prometheus_scrapes_every_metrics_port(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name in SERVICES:
        env = _env(compose["services"][name])
        port = env.get("METRICS_PORT", "0")
        expected = f"{name}:{port}" if port != "0" else f"{name}:{env['API_PORT']}"
        assert expected in targets


def test_nats_config_enables_jetstream_on_a_volume(compose: dict[str, Any]) -> None:
    conf = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*/data", conf)
    assert "nats-data:/data" in compose["services"]["nats"]["volumes"]
    assert compose["services"]["nats"]["image"].startswith("nats:2.1")  # >= 2.10: multi-filter consumers


def test_dockerfile_copies_what_exists_and_runs_a_service() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (\S+)", text, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies {part}, which is not in the repo"
    cmd = re.search(r'^CMD \["python", "-m", "services\.(\w+)"\]', text, flags=re.M)
    assert cmd is not None
    assert cmd.group(1) in SERVICES


def test_metrics_listen_on_loopback_unless_a_container_says_otherwise(compose: dict[str, Any]) -> None:
    assert Settings().metrics_host == "127.0.0.1"
    assert Settings.from_env({}).metrics_host == "127.0.0.1"
    for name in SERVICES:
        env = {k: v for k, v in _env(compose["services"][name]).items() if k != "STRATEGY_CONFIG"}  # a container path
        settings = Settings.from_env(env)
        if settings.metrics_port:  # scraped by Prometheus from another container: must listen beyond loopback
            assert settings.metrics_host == "0.0.0.0", name
