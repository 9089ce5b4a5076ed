"""Settings: where a service finds its peers and how it runs, from environment variables.

Built in a service's ``main()`` and passed down; nothing here runs at import
time. A bad value raises :class:`ConfigError` naming the key and the reason.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from shared.domain.config import DEFAULT_CONFIG_PATH, env_bool, env_int, positive_float
from shared.domain.errors import ConfigError
from shared.domain.partitions import DEFAULT_PARTITIONS, MAX_PARTITIONS
from shared.domain.subjects import Names
from shared.infra.admission import DEFAULT_MAX_SERIES


def _url(key: str, raw: str, schemes: tuple[str, ...]) -> str:
    parsed = urlparse(raw)
    where = parsed.path if parsed.scheme == "unix" else parsed.hostname
    if parsed.scheme not in schemes or not where:
        raise ConfigError(key, f"expected a {'/'.join(schemes)} URL, got {raw!r}")
    return raw


def _nats_urls(raw: str) -> str:
    """NATS_URL: one URL or a comma-separated list (a cluster's nodes); each checked, returned comma-joined."""
    urls = [u.strip() for u in raw.split(",") if u.strip()]
    if not urls:
        raise ConfigError("NATS_URL", "expected one nats:// URL or a comma-separated list, got nothing")
    return ",".join(_url("NATS_URL", u, ("nats", "tls")) for u in urls)


def _secret_file(key: str, raw: str) -> str:
    """The first line of the file ``raw`` names: credentials live in files, never in the environment itself."""
    path = Path(raw)
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret


@dataclass(frozen=True, slots=True)
class Settings:
    """Where a service finds its peers and how it runs; all from environment variables.

    Replicas need no settings of their own: any number of copies of a service
    share its ``PARTITIONS`` by leases (see :mod:`shared.infra.ownership`).
    """

    nats_url: str = "nats://127.0.0.1:4222"  # one URL, or a cluster's as a comma-separated list
    redis_url: str = "redis://127.0.0.1:6379/0"  # may name the ACL user: redis://state_publisher@host:6379/0
    # Replicas of every stream and KV bucket the stack creates: 1 on one server, 3 on a 3-node cluster.
    nats_replicas: int = 1
    nats_user: str | None = None
    # Read from NATS_PASSWORD_FILE / REDIS_PASSWORD_FILE; kept out of repr so a logged Settings shows no secret.
    nats_password: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)
    namespace: str = ""
    strategy_config: Path = DEFAULT_CONFIG_PATH
    log_level: str = "INFO"
    log_json: bool = True
    metrics_port: int = 0  # 0: no /metrics listener (dashboard_api serves its own)
    # Loopback unless configured: a container sets METRICS_HOST=0.0.0.0 for its scraper (docker-compose.yml does).
    metrics_host: str = "127.0.0.1"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: str | None = None  # bearer token for operator endpoints (POST /api/backfill)
    partitions: int = DEFAULT_PARTITIONS  # of the series, per service; fixed for the life of its state
    lease_ttl_sec: float = 5.0  # a dead replica's partitions move after this; replicas beat every ttl / 5
    replica_id: str = ""  # this process's id among its service's replicas; "" = host-pid-random
    max_series: int = DEFAULT_MAX_SERIES  # series the stack admits (the first to appear); later ones dead-lettered
    api_max_body_bytes: int = 65_536  # larger request bodies are refused with 413
    api_sse_max_clients: int = 200  # /api/stream clients past this get 503 + Retry-After
    health_interval_sec: float = 5.0
    # A candle dated later than now + one bar + this is dead-lettered (clock skew allowance), ms.
    future_tolerance_ms: int = 60_000

    # Every environment variable from_env reads (the HMM_* keys are the strategy config's).
    ENV_KEYS: ClassVar[tuple[str, ...]] = (
        "NATS_URL",
        "NATS_REPLICAS",
        "NATS_USER",
        "NATS_PASSWORD_FILE",
        "REDIS_URL",
        "REDIS_PASSWORD_FILE",
        "REGIMES_NAMESPACE",
        "STRATEGY_CONFIG",
        "LOG_LEVEL",
        "LOG_JSON",
        "METRICS_PORT",
        "METRICS_HOST",
        "API_HOST",
        "API_PORT",
        "API_TOKEN",
        "PARTITIONS",
        "LEASE_TTL_SEC",
        "REPLICA_ID",
        "MAX_SERIES",
        "API_MAX_BODY_BYTES",
        "API_SSE_MAX_CLIENTS",
        "HEALTH_INTERVAL_SEC",
        "CANDLE_FUTURE_TOLERANCE_SEC",
    )

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    @property
    def nats_servers(self) -> list[str]:
        """Every NATS URL given: nats-py tries them in turn and fails over between them."""
        return self.nats_url.split(",")

    @property
    def nats_credentials(self) -> dict[str, str]:
        """``user``/``password`` for nats-py's connect, or nothing for a server without authorization."""
        if self.nats_user is None:
            return {}
        return {"user": self.nats_user, "password": self.nats_password or ""}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        kw = _connection_kw(env)
        if "REGIMES_NAMESPACE" in env:
            kw["namespace"] = env["REGIMES_NAMESPACE"]
            Names(kw["namespace"])  # validates
        if "STRATEGY_CONFIG" in env:
            path = Path(env["STRATEGY_CONFIG"])
            if not path.is_file():
                raise ConfigError("STRATEGY_CONFIG", f"no such file: {path}")
            kw["strategy_config"] = path
        if "LOG_LEVEL" in env:
            level = env["LOG_LEVEL"].upper()
            if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise ConfigError("LOG_LEVEL", f"expected DEBUG/INFO/WARNING/ERROR, got {env['LOG_LEVEL']!r}")
            kw["log_level"] = level
        if "LOG_JSON" in env:
            kw["log_json"] = env_bool("LOG_JSON", env["LOG_JSON"])
        if "METRICS_PORT" in env:
            kw["metrics_port"] = env_int("METRICS_PORT", env["METRICS_PORT"], 0, 65535)
        if "METRICS_HOST" in env:
            kw["metrics_host"] = env["METRICS_HOST"]
        if "API_HOST" in env:
            kw["api_host"] = env["API_HOST"]
        if "API_PORT" in env:
            kw["api_port"] = env_int("API_PORT", env["API_PORT"], 1, 65535)
        if env.get("API_TOKEN"):
            if len(env["API_TOKEN"]) < 16:
                raise ConfigError("API_TOKEN", "must be at least 16 characters")
            kw["api_token"] = env["API_TOKEN"]
        if "PARTITIONS" in env:
            kw["partitions"] = env_int("PARTITIONS", env["PARTITIONS"], 1, MAX_PARTITIONS)
        if "LEASE_TTL_SEC" in env:
            kw["lease_ttl_sec"] = _float_between("LEASE_TTL_SEC", env["LEASE_TTL_SEC"], 1.0, 300.0)
        if "MAX_SERIES" in env:
            kw["max_series"] = env_int("MAX_SERIES", env["MAX_SERIES"], 1, 1_000_000)
        if "REPLICA_ID" in env:
            kw["replica_id"] = _replica_id(env["REPLICA_ID"])
        if "API_MAX_BODY_BYTES" in env:
            kw["api_max_body_bytes"] = env_int("API_MAX_BODY_BYTES", env["API_MAX_BODY_BYTES"], 1024, 64 << 20)
        if "API_SSE_MAX_CLIENTS" in env:
            kw["api_sse_max_clients"] = env_int("API_SSE_MAX_CLIENTS", env["API_SSE_MAX_CLIENTS"], 1, 100_000)
        if "HEALTH_INTERVAL_SEC" in env:
            kw["health_interval_sec"] = positive_float("HEALTH_INTERVAL_SEC", env["HEALTH_INTERVAL_SEC"])
        if "CANDLE_FUTURE_TOLERANCE_SEC" in env:
            sec = env_int("CANDLE_FUTURE_TOLERANCE_SEC", env["CANDLE_FUTURE_TOLERANCE_SEC"], 0, 86_400)
            kw["future_tolerance_ms"] = sec * 1000
        return cls(**kw)


def _connection_kw(env: Mapping[str, str]) -> dict[str, Any]:
    """The NATS and Redis fields of ``Settings``: where they are and how to log in."""
    kw: dict[str, Any] = {}
    if "NATS_URL" in env:
        kw["nats_url"] = _nats_urls(env["NATS_URL"])
    if "NATS_REPLICAS" in env:
        # JetStream allows at most 5 replicas; more than the cluster has nodes fails at stream creation.
        kw["nats_replicas"] = env_int("NATS_REPLICAS", env["NATS_REPLICAS"], 1, 5)
    if env.get("NATS_USER"):
        kw["nats_user"] = env["NATS_USER"]
        if not env.get("NATS_PASSWORD_FILE"):
            raise ConfigError("NATS_PASSWORD_FILE", f"NATS_USER={env['NATS_USER']} needs its password file")
        kw["nats_password"] = _secret_file("NATS_PASSWORD_FILE", env["NATS_PASSWORD_FILE"])
    elif env.get("NATS_PASSWORD_FILE"):
        raise ConfigError("NATS_USER", "NATS_PASSWORD_FILE is set but no user is named")
    if "REDIS_URL" in env:
        kw["redis_url"] = _url("REDIS_URL", env["REDIS_URL"], ("redis", "rediss", "unix"))
    if env.get("REDIS_PASSWORD_FILE"):
        kw["redis_password"] = _secret_file("REDIS_PASSWORD_FILE", env["REDIS_PASSWORD_FILE"])
    return kw


def _float_between(key: str, raw: str, lo: float, hi: float) -> float:
    value = positive_float(key, raw)
    if not lo <= value <= hi:
        raise ConfigError(key, f"must be in [{lo}, {hi}], got {value}")
    return value


def _replica_id(raw: str) -> str:
    if not _REPLICA_ID.fullmatch(raw):
        raise ConfigError("REPLICA_ID", f"expected 1-40 of A-Z a-z 0-9 _ -, got {raw!r}")
    return raw


def new_replica_id() -> str:
    """``host-pid-xxxx``: unique per process, readable in the health list, valid in KV keys and consumer names."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:24] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


_REPLICA_ID = re.compile(r"[A-Za-z0-9_-]{1,40}")
