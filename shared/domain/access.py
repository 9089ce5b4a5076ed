"""Who may do what on NATS and Redis: one description of every user, from which each server's configuration is made.

Each service connects as its own NATS user, and so do the two outside clients:
``bot`` (a trading bot: reads regimes and decisions, publishes scores) and
``operator`` (``regimes import`` / ``replay`` / ``backfill``: publishes candles,
asks for backfills, provisions the streams). A user is a :class:`Role`: what it
publishes and subscribes to, which streams it provisions, reads or consumes
through its own durables, which KV buckets it uses, and its Redis access.
:func:`nats_permissions` turns a role into nats-server ``permissions`` (the
JetStream API subjects included); :func:`redis_rules` into a Redis ACL rule.
``regimes.security`` renders them into files, for compose and for ``regimes up``.

Every subject comes from :class:`~shared.domain.subjects.Names`, so a role
follows the namespace. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from shared.domain.subjects import Names

JS = "$JS.API"
INBOX = "_INBOX.>"  # nats-py's replies (requests, JetStream API answers, publish acks, ordered consumers)
SERVICES = ("ohlcv_ingest", "vol_regime", "hmm_regime", "screener", "state_publisher", "dashboard_api")
CLIENTS = ("bot", "operator")
RedisAccess = Literal["write", "read"]


@dataclass(frozen=True, slots=True)
class Bucket:
    """A KV bucket a user binds: ``keys`` it may put (KV subject suffixes; empty: read only); ``lists`` its keys."""

    name: str  # the bucket as named by Names.bucket (namespace included)
    keys: tuple[str, ...] = ()
    lists: bool = False


@dataclass(frozen=True, slots=True)
class Role:
    """Everything one user may do; anything not named here is refused by the server."""

    name: str
    why: str  # one line: what the user is for (the generated config and the README show it)
    publish: tuple[str, ...] = ()  # subjects it publishes to (stream subjects included)
    subscribe: tuple[str, ...] = ()  # core NATS subscriptions (besides its inbox)
    provisions: tuple[str, ...] = ()  # streams it creates and updates (ensure_streams)
    reads: tuple[str, ...] = ()  # streams it reads with ephemeral (ordered) consumers
    durables: tuple[tuple[str, str], ...] = ()  # (stream, durable) pull consumers it owns
    buckets: tuple[Bucket, ...] = ()
    responds: bool = False  # answers requests (may publish to the reply subject of a message it received)
    redis: RedisAccess | None = None

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream this role touches, in a stable order (``ensure_streams`` is given its own)."""
        seen = [*self.provisions, *self.reads, *(s for s, _d in self.durables)]
        return tuple(dict.fromkeys(seen))


def _health(names: Names, service: str) -> Bucket:
    # Health keys are "<service>.<replica id>": a service writes its own replicas' keys only.
    return Bucket(names.bucket("health"), keys=(f"{service}.*",))


def _consumers(stream: str) -> tuple[tuple[str, str], ...]:
    # Each replica names its consumer "<service>-<replica id>", made up at start: NATS wildcards match whole
    # subject tokens only, so the consumer token cannot be narrowed to one service's prefix. A service may
    # therefore manage any consumer of the streams it consumes (never of others; bots and operators of none).
    return ((stream, "*"),)


def _leases(names: Names, service: str) -> tuple[Bucket, ...]:
    """Membership and leases of elastic replicas (the service's own keys only)."""
    return (
        Bucket(names.bucket("members"), keys=(f"{service}.*",), lists=True),
        Bucket(names.bucket("leases"), keys=(f"{service}.*",)),
    )


def _coordination(names: Names, service: str) -> tuple[Bucket, ...]:
    """Leases, and positions per partition in KV (``<service>``: from before partitions, ``<service>.*``)."""
    base = names.durable(service)
    return (Bucket(names.bucket("positions"), keys=(base, f"{base}.*")), *_leases(names, service))


def roles(names: Names) -> dict[str, Role]:
    """Every user of the stack in namespace ``names``; no setting per replica: any number share a user."""
    return {r.name: r for r in (_ingest_role(names), *_service_roles(names), *_reader_roles(names))}


def _ingest_role(names: Names) -> Role:
    """ohlcv_ingest: the candles come in here."""
    ohlcv, telemetry = names.stream_ohlcv, names.stream_telemetry
    return Role(
        "ohlcv_ingest",
        "publishes candles and pipeline telemetry; answers control.backfill",
        publish=(names.ohlcv_all, names.pipeline_all),
        subscribe=(names.ohlcv_all, names.control("backfill")),
        provisions=(ohlcv, telemetry),
        reads=(ohlcv,),
        buckets=(_health(names, "ohlcv_ingest"), Bucket(names.bucket("ingest_state"), keys=(">",))),
        responds=True,
    )


def _service_roles(names: Names) -> list[Role]:
    """The users of the four services that consume a stream and publish what they make of it."""
    return [*_candle_consumer_roles(names), *_regime_consumer_roles(names)]


def _candle_consumer_roles(names: Names) -> list[Role]:
    """vol_regime and hmm_regime: they consume candles and publish regimes."""
    ohlcv, regimes, dlq = names.stream_ohlcv, names.stream_regimes, names.stream_dlq
    series = Bucket(names.bucket("series"), keys=(">",), lists=True)  # the admission registry of candle consumers
    return [
        Role(
            "vol_regime",
            "consumes candles; publishes volatility regimes",
            publish=(names.vol_all, names.dlq("vol_regime")),
            provisions=(ohlcv, regimes, dlq),
            durables=_consumers(ohlcv),
            buckets=(
                _health(names, "vol_regime"),
                Bucket(names.bucket("vol_state"), keys=(">",)),
                series,
                *_coordination(names, "vol_regime"),
            ),
        ),
        Role(
            "hmm_regime",
            "consumes candles (and reads them back to train); publishes HMM regimes",
            publish=(names.hmm_all, names.dlq("hmm_regime")),
            provisions=(ohlcv, regimes, dlq),
            reads=(ohlcv,),
            durables=_consumers(ohlcv),
            buckets=(
                _health(names, "hmm_regime"),
                Bucket(names.bucket("hmm_state"), keys=(">",)),
                series,
                *_coordination(names, "hmm_regime"),
            ),
        ),
    ]


def _regime_consumer_roles(names: Names) -> list[Role]:
    """screener and state_publisher: they consume regimes (and the publisher telemetry too)."""
    regimes, telemetry, dlq = names.stream_regimes, names.stream_telemetry, names.stream_dlq
    return [
        Role(
            "screener",
            "consumes regimes and scores; publishes decisions",
            publish=(names.screener_all, names.dlq("screener")),
            provisions=(regimes, dlq),
            durables=_consumers(regimes),
            buckets=(
                _health(names, "screener"),
                Bucket(names.bucket("screener_state"), keys=(">",)),
                *_coordination(names, "screener"),
            ),
        ),
        Role(
            "state_publisher",
            "consumes regimes, decisions and telemetry; the only writer of Redis",
            publish=(names.dlq("state_publisher"),),
            provisions=(regimes, telemetry, dlq),
            durables=(*_consumers(regimes), *_consumers(telemetry)),
            buckets=(_health(names, "state_publisher"), *_leases(names, "state_publisher")),
            redis="write",
        ),
    ]


def _reader_roles(names: Names) -> list[Role]:
    """The API, bots (which publish scores too) and the operator's tools (which publish candles too)."""
    ohlcv, regimes, telemetry, dlq = names.stream_ohlcv, names.stream_regimes, names.stream_telemetry, names.stream_dlq
    return [
        Role(
            "dashboard_api",
            "reads Redis, the health and series buckets; forwards POST /api/backfill to control.backfill",
            publish=(names.control("backfill"),),
            buckets=(
                Bucket(names.bucket("health"), keys=("dashboard_api.*",), lists=True),
                Bucket(names.bucket("series"), lists=True),  # read only: GET /api/series
            ),
            redis="read",
        ),
        Role(
            "bot",
            "a trading bot: reads regimes and decisions (live or from the stream), publishes scores",
            publish=(names.scores_all,),
            subscribe=(names.vol_all, names.hmm_all, names.screener_all),
            reads=(regimes,),
        ),
        Role(
            "operator",
            "regimes import / replay / backfill: publishes candles, asks for backfills, provisions the streams",
            publish=(names.ohlcv_all, names.control("backfill")),
            provisions=(ohlcv, regimes, telemetry, dlq),
            buckets=(Bucket(names.bucket("health"), lists=True),),  # read only: `regimes status`, readiness
        ),
    ]


def nats_permissions(role: Role) -> dict[str, Any]:
    """nats-server ``permissions`` for ``role``: allow lists only, so whatever is not named is refused.

    The JetStream API is requests on ``$JS.API.<verb>.<stream>[.<consumer>]``:
    each verb is granted for the streams the role uses and, for consumers,
    its own durables only. An ordered consumer (ephemeral, no name) is created
    on ``CONSUMER.CREATE.<stream>`` and answers flow control on ``$JS.FC.<stream>.>``.
    """
    pub: list[str] = list(role.publish)
    for stream in role.provisions:
        pub += [f"{JS}.STREAM.CREATE.{stream}", f"{JS}.STREAM.UPDATE.{stream}"]
    for stream in role.streams:
        pub.append(f"{JS}.STREAM.INFO.{stream}")
    for stream in role.reads:
        pub += _ordered(stream)
    for stream, durable in role.durables:
        pub += [
            f"{JS}.{verb}.{stream}.{durable}"
            for verb in ("CONSUMER.DURABLE.CREATE", "CONSUMER.DELETE", "CONSUMER.INFO", "CONSUMER.MSG.NEXT")
        ]
    for bucket in role.buckets:
        stream = f"KV_{bucket.name}"
        pub += [
            f"{JS}.STREAM.INFO.{stream}",
            f"{JS}.STREAM.CREATE.{stream}",  # the first service up creates it
            f"{JS}.STREAM.MSG.GET.{stream}",
            f"{JS}.DIRECT.GET.{stream}.>",
        ]
        pub += [f"$KV.{bucket.name}.{key}" for key in bucket.keys]
        if bucket.lists:
            pub += _ordered(stream)
    perms: dict[str, Any] = {
        "publish": {"allow": list(dict.fromkeys(pub))},
        "subscribe": {"allow": list(dict.fromkeys([INBOX, *role.subscribe]))},
    }
    if role.responds:
        perms["allow_responses"] = True
    return perms


def _ordered(stream: str) -> list[str]:
    """An ordered consumer: created without a name (the server picks one, so info is on any name: read only)."""
    return [f"{JS}.CONSUMER.CREATE.{stream}", f"{JS}.CONSUMER.INFO.{stream}.*", f"$JS.FC.{stream}.>"]


def redis_rules(role: Role, names: Names) -> str:
    """The ACL rule (after ``user <name> on >password``) for ``role``'s Redis access, on this stack's keys only.

    ``write``: read and write commands, transactions and PUBLISH of the change
    notice. ``read``: read commands and SUBSCRIBE. Neither gets the dangerous
    ones (FLUSHALL, KEYS, CONFIG, DEBUG...).
    """
    pattern = names.redis_key("*")
    if role.redis == "write":
        commands = "-@all +@read +@write +@transaction +@connection +publish +ping -@dangerous"
    elif role.redis == "read":
        commands = "-@all +@read +@connection +subscribe +unsubscribe +ping -@dangerous"
    else:
        raise ValueError(f"{role.name} has no Redis access")
    # reset* first, so that this stack's key and channel patterns are the only ones allowed.
    return f"resetkeys ~{pattern} resetchannels &{pattern} {commands}"
