"""Settings: where a service finds its peers and how it runs, from environment variables.

Built in a service's ``main()`` and passed down; nothing here runs at import
time. A bad value raises :class:`ConfigError` naming the key and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from shared.domain.config import DEFAULT_CONFIG_PATH, env_bool, env_int, positive_float
from shared.domain.errors import ConfigError
from shared.domain.subjects import Names


def _url(key: str, raw: str, schemes: tuple[str, ...]) -> str:
    parsed = urlparse(raw)
    where = parsed.path if parsed.scheme == "unix" else parsed.hostname
    if parsed.scheme not in schemes or not where:
        raise ConfigError(key, f"expected a {'/'.join(schemes)} URL, got {raw!r}")
    return raw



@dataclass(frozen=True, slots=True)
class Settings:
    """Where a service finds its peers and how it runs; all from environment variables.

    ``REPLICA`` (``i/n``, 1-based) splits the series between n replicas of one
    stateful service: each replica owns the series whose stable hash lands on it.
    """

    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
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
    api_max_body_bytes: int = 65_536  # larger request bodies are refused with 413
    api_sse_max_clients: int = 200  # /api/stream clients past this get 503 + Retry-After
    replica: int = 0  # 0-based
    replicas: int = 1
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
        "API_MAX_BODY_BYTES",
        "API_SSE_MAX_CLIENTS",
        "REPLICA",
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
        if "API_MAX_BODY_BYTES" in env:
            kw["api_max_body_bytes"] = env_int("API_MAX_BODY_BYTES", env["API_MAX_BODY_BYTES"], 1024, 64 << 20)
        if "API_SSE_MAX_CLIENTS" in env:
            kw["api_sse_max_clients"] = env_int("API_SSE_MAX_CLIENTS", env["API_SSE_MAX_CLIENTS"], 1, 100_000)
        if "REPLICA" in env:
            kw["replica"], kw["replicas"] = _replica(env["REPLICA"])
        if "HEALTH_INTERVAL_SEC" in env:
            kw["health_interval_sec"] = positive_float("HEALTH_INTERVAL_SEC", env["HEALTH_INTERVAL_SEC"])
        if "CANDLE_FUTURE_TOLERANCE_SEC" in env:
            sec = env_int("CANDLE_FUTURE_TOLERANCE_SEC", env["CANDLE_FUTURE_TOLERANCE_SEC"], 0, 86_400)
            kw["future_tolerance_ms"] = sec * 1000
        return cls(**kw)


def _replica(raw: str) -> tuple[int, int]:
    try:
        i_s, n_s = raw.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ConfigError("REPLICA", f"expected i/n such as 1/3, got {raw!r}") from None
    if not 1 <= i <= n <= 64:
        raise ConfigError("REPLICA", f"need 1 <= i <= n <= 64, got {raw!r}")
    return i - 1, n
