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
from dataclasses import dataclass
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



@dataclass(frozen=True, slots=True)
class Settings:
    """Where a service finds its peers and how it runs; all from environment variables.

    Replicas need no settings of their own: any number of copies of a service
    share its ``PARTITIONS`` by leases (see :mod:`shared.infra.ownership`).
    """

    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = ""
    strategy_config: Path = DEFAULT_CONFIG_PATH
    log_level: str = "INFO"
    log_json: bool = True
    metrics_port: int = 0  # 0: no /metrics listener (dashboard_api serves its own)
    metrics_host: str = "0.0.0.0"  # a container's scrape target; `regimes up` keeps it on loopback
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: str | None = None  # bearer token for operator endpoints (POST /api/backfill)
    partitions: int = DEFAULT_PARTITIONS  # of the series, per service; fixed for the life of its state
    lease_ttl_sec: float = 5.0  # a dead replica's partitions move after this; replicas beat every ttl / 5
    replica_id: str = ""  # this process's id among its service's replicas; "" = host-pid-random
    max_series: int = DEFAULT_MAX_SERIES  # series the stack admits (the first to appear); later ones dead-lettered
    health_interval_sec: float = 5.0
    # A candle dated later than now + one bar + this is dead-lettered (clock skew allowance), ms.
    future_tolerance_ms: int = 60_000

    # Every environment variable from_env reads (the HMM_* keys are the strategy config's).
    ENV_KEYS: ClassVar[tuple[str, ...]] = (
        "NATS_URL",
        "REDIS_URL",
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
        "HEALTH_INTERVAL_SEC",
        "CANDLE_FUTURE_TOLERANCE_SEC",
    )

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        if "NATS_URL" in env:
            kw["nats_url"] = _url("NATS_URL", env["NATS_URL"], ("nats", "tls"))
        if "REDIS_URL" in env:
            kw["redis_url"] = _url("REDIS_URL", env["REDIS_URL"], ("redis", "rediss", "unix"))
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
        if "HEALTH_INTERVAL_SEC" in env:
            kw["health_interval_sec"] = positive_float("HEALTH_INTERVAL_SEC", env["HEALTH_INTERVAL_SEC"])
        if "CANDLE_FUTURE_TOLERANCE_SEC" in env:
            sec = env_int("CANDLE_FUTURE_TOLERANCE_SEC", env["CANDLE_FUTURE_TOLERANCE_SEC"], 0, 86_400)
            kw["future_tolerance_ms"] = sec * 1000
        return cls(**kw)


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
