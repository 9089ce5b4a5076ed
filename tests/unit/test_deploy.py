"""The compose file and the image, checked without a Docker engine: parsed, and tied to code that exists."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from regimes.security import Secrets, write_secrets
from regimes.servers import find_nats_server
from regimes.supervisor import SERVICES
from shared.domain.access import roles
from shared.domain.config import HmmConfig, load_strategy_config
from shared.domain.subjects import Names
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


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Secrets:
    """What `regimes secrets` writes into deploy/secrets, written to a temporary directory instead."""
    return write_secrets(tmp_path_factory.mktemp("secrets"), Names(""), cost=4)


def _mounted(compose: dict[str, Any], service: str, generated: Secrets) -> dict[str, Path]:
    """/run/secrets/<target> in ``service``'s container -> the generated file compose mounts there."""
    files = compose["secrets"]
    out = {}
    for item in compose["services"][service].get("secrets", []):
        source, target = (item, item) if isinstance(item, str) else (item["source"], item.get("target", item["source"]))
        rel = Path(files[source]["file"]).relative_to("deploy/secrets")
        out[target if target.startswith("/") else f"/run/secrets/{target}"] = generated.root / rel
    return out


def test_service_environment_is_settings_the_code_reads(
    compose: dict[str, Any], tmp_path: Path, generated: Secrets
) -> None:
    known = set(Settings.ENV_KEYS) | set(HmmConfig.keys())
    for name in SERVICES:
        env = _env(compose["services"][name])
        assert set(env) <= known, f"{name} sets variables no code reads: {set(env) - known}"
        # The container path maps onto ./config through the volume.
        volumes = compose["services"][name]["volumes"]
        assert "./config:/app/config:ro" in volumes
        env["STRATEGY_CONFIG"] = str(ROOT / "config" / Path(env["STRATEGY_CONFIG"]).name)
        mounted = _mounted(compose, name, generated)
        env = {k: str(mounted.get(v, v)) for k, v in env.items()}
        settings = Settings.from_env(env)
        assert settings.nats_url == "nats://nats:4222"
        assert settings.nats_replicas == 1
        # The password the service reads is the one `regimes secrets` wrote for this very user.
        assert settings.nats_user == name
        assert settings.nats_password == generated.nats_password(name).read_text().strip()
        load_strategy_config(settings.strategy_config, env)


def test_each_container_is_given_its_own_credentials_only(compose: dict[str, Any], generated: Secrets) -> None:
    users = roles(Names(""))
    for name in SERVICES:
        mounted = _mounted(compose, name, generated)
        wanted = {generated.nats_password(name)}
        if users[name].redis is not None:
            wanted.add(generated.redis_password(name))
            env = _env(compose["services"][name])
            assert env["REDIS_URL"] == f"redis://{name}@redis:6379/0"
        assert set(mounted.values()) == wanted, name
    for server, conf in (("nats", generated.nats_auth), ("redis", generated.redis_acl)):
        assert set(_mounted(compose, server, generated).values()) == {conf}
    # Every secret compose names is a file `regimes secrets` writes, and no value in the file is a credential.
    for spec in compose["secrets"].values():
        assert (generated.root / Path(spec["file"]).relative_to("deploy/secrets")).is_file(), spec
    text = (ROOT / "docker-compose.yml").read_text()
    for user in users:
        assert generated.nats_password(user).read_text().strip() not in text
    assert "deploy/secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def _cluster_env() -> dict[str, str]:
    lines = (ROOT / "deploy" / "cluster.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_cluster_profile_is_three_nodes_the_services_use_at_r3(compose: dict[str, Any], generated: Secrets) -> None:
    services = compose["services"]
    nodes = [n for n, spec in services.items() if "cluster" in spec.get("profiles", [])]
    assert nodes == ["nats-1", "nats-2", "nats-3"]
    conf = (ROOT / "deploy" / "nats" / "cluster.conf").read_text()
    routes = re.findall(r"nats://([\w-]+):6222", conf)
    assert routes == nodes
    volumes = set()
    for node in nodes:
        spec = services[node]
        assert spec["command"][-2:] == ["--name", node]
        assert "./deploy/nats/cluster.conf:/etc/nats/cluster.conf:ro" in spec["volumes"]
        volumes |= {v for v in spec["volumes"] if v.endswith(":/data")}
        assert set(_mounted(compose, node, generated).values()) == {generated.nats_auth}
    assert len(volumes) == 3  # a store of its own per node
    cluster = _cluster_env()
    assert cluster["COMPOSE_PROFILES"] == "cluster"
    for name in SERVICES:
        env = _env(services[name])
        # What compose substitutes with deploy/cluster.env: the same variables, the cluster's values.
        env["NATS_URL"], env["NATS_REPLICAS"] = cluster["NATS_URL"], cluster["NATS_REPLICAS"]
        env = {k: str(_mounted(compose, name, generated).get(v, v)) for k, v in env.items()}
        env["STRATEGY_CONFIG"] = str(ROOT / "config" / "strategy_config.json")
        settings = Settings.from_env(env)
        assert settings.nats_servers == [f"nats://{n}:4222" for n in nodes]
        assert settings.nats_replicas == 3
        deps = services[name]["depends_on"]
        assert all(deps[n] == {"condition": "service_healthy", "required": False} for n in nodes)


def test_the_nats_configurations_are_valid_for_nats_server(tmp_path: Path, generated: Secrets) -> None:
    """nats-server itself checks both files (-t), with the generated users beside them as compose mounts them."""
    binary = find_nats_server()
    for name in ("nats.conf", "cluster.conf"):
        (tmp_path / name).write_text((ROOT / "deploy" / "nats" / name).read_text())
    (tmp_path / "auth.conf").write_text(generated.nats_auth.read_text())
    for name in ("nats.conf", "cluster.conf"):
        done = subprocess.run([binary, "-t", "-c", str(tmp_path / name)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "is valid" in done.stdout + done.stderr


def test_dashboard_is_published_and_healthchecked(compose: dict[str, Any]) -> None:
    api = compose["services"]["dashboard_api"]
    env = _env(api)
    assert env["API_HOST"] == "0.0.0.0"
    assert Settings().metrics_host == "127.0.0.1"  # outside a container, /metrics stays on loopback
    assert env["METRICS_HOST"] == "0.0.0.0"  # inside, Prometheus scrapes it over the compose network
    assert f"{env['API_PORT']}:{env['API_PORT']}" in api["ports"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_nats_is_published_for_bots_on_loopback_only(compose: dict[str, Any]) -> None:
    assert compose["services"]["nats"]["ports"] == ["127.0.0.1:4222:4222"]  # loopback: bots on this host only


def test_prometheus_scrapes_every_metrics_port(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    for name in SERVICES:
        env = _env(compose["services"][name])
        port = env.get("METRICS_PORT", "0")
        expected = f"{name}:{port}" if port != "0" else f"{name}:{env['API_PORT']}"
        assert expected in targets


def test_nats_config_enables_jetstream_on_a_volume(compose: dict[str, Any]) -> None:
    for name in ("nats.conf", "cluster.conf"):
        conf = (ROOT / "deploy" / "nats" / name).read_text()
        assert re.search(r"jetstream\s*\{[^}]*store_dir:\s*/data", conf)
        assert re.search(r"^include \./auth\.conf$", conf, flags=re.M)  # no user connects without a password
    assert "nats-data:/data" in compose["services"]["nats"]["volumes"]
    for node in ("nats", "nats-1", "nats-2", "nats-3"):
        assert compose["services"][node]["image"].startswith("nats:2.1")  # >= 2.10: multi-filter consumers


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
        # Container paths (the config, the credential files) are not on this machine.
        here = {k: v for k, v in _env(compose["services"][name]).items() if k not in ("STRATEGY_CONFIG", "NATS_USER")}
        env = {k: v for k, v in here.items() if not k.endswith("_FILE")}
        settings = Settings.from_env(env)
        if settings.metrics_port:  # scraped by Prometheus from another container: must listen beyond loopback
            assert settings.metrics_host == "0.0.0.0", name
