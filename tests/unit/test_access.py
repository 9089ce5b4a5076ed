"""The users' description (shared/domain/access.py) and what regimes/security.py renders from it.

That the servers enforce it, and that each service can do its job with it,
is tests/integration/test_least_privilege.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from regimes import cli, stackfile
from regimes.security import Secrets, write_secrets
from shared.domain.access import CLIENTS, SERVICES, nats_permissions, roles
from shared.domain.subjects import Names, SeriesKey

NAMES = Names("ns")
KEY = SeriesKey("kraken", "BTC/USD", "1m")


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def may_publish(user: str, subject: str) -> bool:
    return any(matches(p, subject) for p in nats_permissions(roles(NAMES)[user])["publish"]["allow"])


def may_subscribe(user: str, subject: str) -> bool:
    return any(matches(p, subject) for p in nats_permissions(roles(NAMES)[user])["subscribe"]["allow"])


def test_every_user_is_described_once() -> None:
    assert list(roles(NAMES)) == [*SERVICES, *CLIENTS]


@pytest.mark.parametrize(
    ("user", "subject", "allowed"),
    [
        ("bot", NAMES.score("carry", KEY), True),
        ("bot", NAMES.ohlcv(KEY), False),
        ("bot", NAMES.control("backfill"), False),
        ("bot", NAMES.screener(KEY), False),
        ("bot", NAMES.vol(KEY), False),
        ("operator", NAMES.ohlcv(KEY), True),
        ("operator", NAMES.control("backfill"), True),
        ("operator", NAMES.screener(KEY), False),
        ("ohlcv_ingest", NAMES.ohlcv(KEY), True),
        ("ohlcv_ingest", NAMES.pipeline(KEY), True),
        ("ohlcv_ingest", NAMES.vol(KEY), False),
        ("vol_regime", NAMES.vol(KEY), True),
        ("vol_regime", NAMES.dlq("vol_regime"), True),
        ("vol_regime", NAMES.dlq("screener"), False),  # a dead letter in another service's name
        ("vol_regime", NAMES.screener(KEY), False),
        ("vol_regime", NAMES.hmm(KEY), False),
        ("hmm_regime", NAMES.hmm(KEY), True),
        ("screener", NAMES.screener(KEY), True),
        ("screener", NAMES.score("carry", KEY), False),
        ("state_publisher", NAMES.screener(KEY), False),
        ("dashboard_api", NAMES.control("backfill"), True),
        ("dashboard_api", NAMES.ohlcv(KEY), False),
        ("vol_regime", f"$KV.ns_vol_state.{KEY.token}", True),
        ("vol_regime", f"$KV.ns_hmm_state.{KEY.token}", False),
        ("vol_regime", "$KV.ns_positions.ns_vol_regime", True),
        ("vol_regime", "$KV.ns_positions.ns_screener", False),
        ("vol_regime", "$KV.ns_health.vol_regime.1of1", True),
        ("vol_regime", "$KV.ns_health.screener.1of1", False),
        ("screener", "$JS.API.CONSUMER.MSG.NEXT.ns_REGIMES.ns_screener", True),
        # Consumers are named per replica at start, so consumer rights go by stream: the screener may reach
        # state_publisher's consumer of REGIMES (a stream both consume), never one of OHLCV.
        ("screener", "$JS.API.CONSUMER.MSG.NEXT.ns_OHLCV.ns_vol_regime-host-1-ab", False),
        ("bot", "$JS.API.CONSUMER.CREATE.ns_REGIMES", True),  # an ordered consumer of its own
        ("bot", "$JS.API.CONSUMER.DELETE.ns_REGIMES.ns_screener", False),
        ("bot", "$JS.API.CONSUMER.DURABLE.CREATE.ns_REGIMES.ns_screener", False),
    ],
)
def test_publish_permissions_follow_each_role(user: str, subject: str, allowed: bool) -> None:
    assert may_publish(user, subject) is allowed


@pytest.mark.parametrize(
    ("user", "subject", "allowed"),
    [
        ("bot", NAMES.screener(KEY), True),
        ("bot", NAMES.vol(KEY), True),
        ("bot", NAMES.hmm(KEY), True),
        ("bot", NAMES.ohlcv(KEY), False),
        ("bot", NAMES.control("backfill"), False),
        ("ohlcv_ingest", NAMES.control("backfill"), True),
        ("vol_regime", NAMES.control("backfill"), False),
        ("vol_regime", "_INBOX.abc.1", True),
    ],
)
def test_subscribe_permissions_follow_each_role(user: str, subject: str, allowed: bool) -> None:
    assert may_subscribe(user, subject) is allowed


def test_no_user_may_delete_or_purge_anything_or_publish_everywhere() -> None:
    for role in roles(NAMES).values():
        perms = nats_permissions(role)
        for subject in perms["publish"]["allow"]:
            assert subject not in (">", "$JS.API.>", "$JS.>", "$KV.>"), role.name
            forbidden = r"STREAM\.(DELETE|PURGE)|MSG\.DELETE|SERVER\.|ACCOUNT\."
            assert not re.search(forbidden, subject), (role.name, subject)
        # Only the one service that answers requests may publish to whatever reply subject it was given.
        assert perms.get("allow_responses", False) == (role.name == "ohlcv_ingest")


def test_every_subject_is_the_namespaces_own() -> None:
    """Derived from Names: another namespace's (or the default stack's) subjects are not reachable."""
    for role in roles(NAMES).values():
        perms = nats_permissions(role)
        for subject in [*perms["publish"]["allow"], *perms["subscribe"]["allow"]]:
            if subject.startswith("_INBOX."):
                continue
            if subject.startswith(("$JS.", "$KV.")):
                assert re.search(r"[._]ns_", subject), subject
            else:
                assert subject.startswith("ns."), subject
    assert not may_publish("vol_regime", Names("").vol(KEY))


def test_any_number_of_replicas_share_one_user_limited_to_its_own_leases_and_positions() -> None:
    users = roles(NAMES)
    assert users["vol_regime"].durables == (("ns_OHLCV", "*"),)
    assert may_publish("vol_regime", "$KV.ns_positions.ns_vol_regime.p3")
    assert may_publish("vol_regime", "$KV.ns_leases.vol_regime.p3")
    assert may_publish("vol_regime", "$KV.ns_members.vol_regime.host-12-ab")
    assert not may_publish("vol_regime", "$KV.ns_leases.screener.p3")  # nor another service's
    assert not may_publish("vol_regime", "$KV.ns_positions.ns_screener.p3")
    assert not may_publish("bot", "$KV.ns_leases.vol_regime.p3")
    assert may_publish("state_publisher", "$KV.ns_leases.state_publisher.p0")
    # Consumers are named per replica at start: a service manages those of the streams it consumes only.
    assert may_publish("vol_regime", "$JS.API.CONSUMER.MSG.NEXT.ns_OHLCV.ns_vol_regime-host-12-ab")
    assert not may_publish("vol_regime", "$JS.API.CONSUMER.MSG.NEXT.ns_REGIMES.ns_screener-host-12-ab")


def test_generated_files_hold_hashes_only_and_keep_passwords(tmp_path: Path) -> None:
    root = tmp_path / "secrets"
    out = write_secrets(root, NAMES, cost=4)
    passwords = {u: out.nats_password(u).read_text().strip() for u in roles(NAMES)}
    conf = out.nats_auth.read_text()
    for user, password in passwords.items():
        assert f'"user": "{user}"' in conf
        assert password not in conf
        assert len(password) >= 32
    assert len(set(passwords.values())) == len(passwords)
    acl = out.redis_acl.read_text().splitlines()
    assert acl[0] == "user default on nopass resetkeys resetchannels -@all +ping"
    for user in ("state_publisher", "dashboard_api"):
        digest = hashlib.sha256(out.redis_password(user).read_text().strip().encode()).hexdigest()
        assert any(line.startswith(f"user {user} on #{digest} ") and "~regimes:ns:*" in line for line in acl)
    assert (root.stat().st_mode & 0o077) == 0
    # Run again: the same passwords (clients keep working), the configuration written anew.
    again = write_secrets(root, NAMES, cost=4)
    assert {u: again.nats_password(u).read_text().strip() for u in roles(NAMES)} == passwords


def test_regimes_env_prints_what_a_user_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = write_secrets(tmp_path / "secrets", Names(""), cost=4)
    me = os.getpid()  # a stack `regimes up` recorded in this data dir, "running" as this process
    info = stackfile.StackInfo(
        pid=me, pid_start=stackfile.process_start(me), nats_url="nats://127.0.0.1:4333",
        redis_url="redis://127.0.0.1:6390/0", api_url=None, namespace="", data_dir=str(tmp_path),
    )
    (tmp_path / stackfile.STATE_NAME).write_text(info.to_json())
    cli.main(["env", "--user", "dashboard_api", "--data-dir", str(tmp_path)])
    printed = dict(kv.split("=", 1) for kv in shlex.split(capsys.readouterr().out)[1:])  # export K=V ...
    assert printed["NATS_URL"] == "nats://127.0.0.1:4333"
    assert printed["NATS_USER"] == "dashboard_api"
    assert printed["NATS_PASSWORD_FILE"] == str(out.nats_password("dashboard_api"))
    assert printed["REDIS_URL"] == "redis://dashboard_api@127.0.0.1:6390/0"
    assert printed["REDIS_PASSWORD_FILE"] == str(out.redis_password("dashboard_api"))
    cli.main(["env", "--user", "bot", "--data-dir", str(tmp_path)])
    assert "REDIS_PASSWORD_FILE" not in capsys.readouterr().out  # the bot has no Redis user
    with pytest.raises(SystemExit) as exc:
        cli.main(["env", "--user", "root", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "unknown user 'root'" in capsys.readouterr().err


def test_regimes_secrets_writes_what_compose_mounts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["secrets", str(tmp_path / "s")])
    assert "wrote nats-auth.conf" in capsys.readouterr().out
    out = Secrets(tmp_path / "s")
    assert out.nats_password("operator").is_file()
    assert "ns_vol_regime" not in out.nats_auth.read_text()  # the default namespace
    assert '"$KV.positions.vol_regime.*"' in out.nats_auth.read_text()
    raw = out.nats_auth.read_text()
    body = raw[raw.index("users: [") + len("users: ") :].rsplit("}", 1)[0]
    entries = [json.loads(line.strip().rstrip(",")) for line in body.splitlines() if line.strip().startswith("{")]
    assert [e["user"] for e in entries] == [*SERVICES, *CLIENTS]
