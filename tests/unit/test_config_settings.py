"""Settings from the environment: defaults, every variable read and spelled, credentials from files.

Every bad value raises ConfigError naming its variable, so a service refuses to start with a
clear message; ``Settings.ENV_KEYS`` lists every variable ``from_env`` reads, and the HMM_*
keys are left to the strategy config (``test_config.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.domain.config import DEFAULT_CONFIG_PATH, HmmConfig
from shared.domain.subjects import SeriesKey
from shared.infra.settings import Settings
from tests.unit.config_refusal import raises_naming

# --- Settings.from_env -----------------------------------------------------------------------------------


def test_empty_environment_gives_the_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert (s.nats_url, s.redis_url, s.namespace) == ("nats://127.0.0.1:4222", "redis://127.0.0.1:6379/0", "")
    assert (s.partitions, s.lease_ttl_sec, s.replica_id) == (16, 5.0, "")
    assert (s.api_token, s.strategy_config) == (None, DEFAULT_CONFIG_PATH)


def test_good_values_are_read(tmp_path: Path) -> None:
    cfg = tmp_path / "strategy.json"
    cfg.write_text("{}")
    s = Settings.from_env(
        {
            "NATS_URL": "tls://nats.internal:4443",
            "REDIS_URL": "rediss://user:pw@redis.internal:6380/2",
            "REGIMES_NAMESPACE": "paper_1",
            "STRATEGY_CONFIG": str(cfg),
            "LOG_LEVEL": "debug",
            "LOG_JSON": "off",
            "METRICS_PORT": "9100",
            "METRICS_HOST": "0.0.0.0",
            "API_HOST": "0.0.0.0",
            "API_PORT": "8080",
            "API_TOKEN": "s3cret-token-0123456789",
            "PARTITIONS": "32",
            "LEASE_TTL_SEC": "8",
            "REPLICA_ID": "node-7_a",
            "API_MAX_BODY_BYTES": "4096",
            "API_SSE_MAX_CLIENTS": "7",
            "HEALTH_INTERVAL_SEC": "2.5",
        }
    )
    assert s.nats_url == "tls://nats.internal:4443"
    assert s.redis_url == "rediss://user:pw@redis.internal:6380/2"
    assert s.namespace == "paper_1"
    assert s.names.vol(SeriesKey("kraken", "BTC/USD", "1m")).startswith("paper_1.")
    assert s.strategy_config == cfg
    assert (s.log_level, s.log_json) == ("DEBUG", False)
    assert (s.metrics_port, s.metrics_host, s.api_host, s.api_port) == (9100, "0.0.0.0", "0.0.0.0", 8080)
    assert s.api_token == "s3cret-token-0123456789"
    assert (s.partitions, s.lease_ttl_sec, s.replica_id) == (32, 8.0, "node-7_a")
    assert (s.api_max_body_bytes, s.api_sse_max_clients) == (4096, 7)
    assert s.health_interval_sec == 2.5


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("No", False)])
def test_boolean_spellings(raw: str, value: bool) -> None:
    assert Settings.from_env({"LOG_JSON": raw}).log_json is value


def test_empty_api_token_means_no_token() -> None:
    assert Settings.from_env({"API_TOKEN": ""}).api_token is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NATS_URL", "http://localhost:4222"),
        ("NATS_URL", "localhost:4222"),
        ("NATS_URL", "nats://"),
        ("REDIS_URL", "nats://localhost:6379"),
        ("REDIS_URL", "redis://"),
        ("REGIMES_NAMESPACE", "paper.live"),
        ("REGIMES_NAMESPACE", "has space"),
        ("STRATEGY_CONFIG", "/definitely/not/here.json"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_JSON", "maybe"),
        ("METRICS_PORT", "abc"),
        ("METRICS_PORT", "-1"),
        ("METRICS_PORT", "65536"),
        ("API_PORT", "0"),
        ("API_PORT", "80.5"),
        ("API_TOKEN", "short"),
        ("PARTITIONS", "0"),
        ("PARTITIONS", "257"),
        ("PARTITIONS", "four"),
        ("LEASE_TTL_SEC", "0.5"),
        ("LEASE_TTL_SEC", "nan"),
        ("REPLICA_ID", "has space"),
        ("REPLICA_ID", "a.b"),
        ("REPLICA_ID", ""),
        ("API_MAX_BODY_BYTES", "100"),
        ("API_MAX_BODY_BYTES", "lots"),
        ("API_SSE_MAX_CLIENTS", "0"),
        ("HEALTH_INTERVAL_SEC", "0"),
        ("HEALTH_INTERVAL_SEC", "-2"),
        ("HEALTH_INTERVAL_SEC", "soon"),
        ("NATS_URL", "nats://a:4222,http://b:4222"),  # every URL of a list is checked
        ("NATS_URL", " , "),
        ("NATS_REPLICAS", "0"),
        ("NATS_REPLICAS", "6"),  # JetStream's most
        ("NATS_REPLICAS", "three"),
        ("NATS_PASSWORD_FILE", "/definitely/not/here"),  # without a NATS_USER: NATS_USER is what is missing
        ("REDIS_PASSWORD_FILE", "/definitely/not/here"),
    ],
)
def test_bad_setting_is_refused_naming_its_key(key: str, value: str) -> None:
    expected = "NATS_USER" if key == "NATS_PASSWORD_FILE" else key
    raises_naming(expected, lambda: Settings.from_env({key: value}))


def test_a_cluster_is_a_comma_separated_nats_url_and_a_replica_count() -> None:
    s = Settings.from_env({"NATS_URL": "nats://n1:4222, nats://n2:4222,nats://n3:4222", "NATS_REPLICAS": "3"})
    assert s.nats_servers == ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
    assert s.nats_replicas == 3
    assert Settings.from_env({}).nats_replicas == 1


def test_credentials_come_from_files_and_stay_out_of_repr(tmp_path: Path) -> None:
    nats_pw, redis_pw = tmp_path / "nats.password", tmp_path / "redis.password"
    nats_pw.write_text("n-secret-123\n")
    redis_pw.write_text("r-secret-456\n")
    s = Settings.from_env(
        {
            "NATS_USER": "vol_regime",
            "NATS_PASSWORD_FILE": str(nats_pw),
            "REDIS_URL": "redis://state_publisher@redis:6379/0",
            "REDIS_PASSWORD_FILE": str(redis_pw),
        }
    )
    assert s.nats_credentials == {"user": "vol_regime", "password": "n-secret-123"}
    assert s.redis_password == "r-secret-456"
    assert "secret" not in repr(s)
    assert Settings.from_env({}).nats_credentials == {}


def test_a_user_without_its_password_file_is_refused(tmp_path: Path) -> None:
    raises_naming("NATS_PASSWORD_FILE", lambda: Settings.from_env({"NATS_USER": "bot"}))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    env = {"NATS_USER": "bot", "NATS_PASSWORD_FILE": str(empty)}
    raises_naming("NATS_PASSWORD_FILE", lambda: Settings.from_env(env))


def test_bad_setting_is_named_even_among_good_ones() -> None:
    env = {"NATS_URL": "nats://n:4222", "LOG_LEVEL": "INFO", "API_PORT": "99999", "PARTITIONS": "8"}
    raises_naming("API_PORT", lambda: Settings.from_env(env))


def test_redis_unix_socket_url_is_accepted() -> None:
    # "unix" is one of the accepted REDIS_URL schemes; a unix-socket URL has a path, never a host.
    assert Settings.from_env({"REDIS_URL": "unix:///run/redis/redis.sock"}).redis_url == "unix:///run/redis/redis.sock"


class RecordingEnv(dict[str, str]):
    """An environment that remembers which variables were looked at."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: set[str] = set()

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> str:
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.seen.add(key)
        return super().get(key, default)


def test_env_keys_lists_every_variable_from_env_reads() -> None:
    env = RecordingEnv()
    Settings.from_env(env)
    assert env.seen, "from_env read nothing through the mapping it was given"
    assert env.seen <= set(Settings.ENV_KEYS), f"read but not in ENV_KEYS: {env.seen - set(Settings.ENV_KEYS)}"


def test_from_env_reads_no_hmm_keys_itself() -> None:
    env = RecordingEnv()
    Settings.from_env(env)
    assert not env.seen & set(HmmConfig.keys())
