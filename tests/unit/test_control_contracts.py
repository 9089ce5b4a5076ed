"""The control plane's contracts keep their wire format: backfill request/reply (JSON) and the heartbeat (msgpack)."""

from __future__ import annotations

import json

import msgpack
import pytest

from shared.domain.contracts import ContractError, decode_json, encode_json
from shared.domain.control import BackfillReply, BackfillRequest, BackfillResult, Heartbeat
from shared.infra.bus import Health
from shared.infra.telemetry import Metrics

RESULT = BackfillResult("kraken:BTC/USD:1m", True, 720, "backfilled 720 candles")
BEAT = Heartbeat("hmm_regime", "1/2", "host-a", 4242, 1_700_000_000_000, 1_700_000_060_000, 900, 12, 1,
                 {"last_training": {"series": "kraken:BTC/USD:1m", "at": 1_700_000_050_000, "ms": 75}})  # fmt: skip


# --- backfill on control.backfill ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [
        b"{}",  # the API's empty body, as ingest always took it
        json.dumps({"series": "kraken:BTC/USD:1m", "target_candles": 200, "max_pages": None}).encode(),  # the CLI's
        b'{"series":null,"target_candles":null,"max_pages":3}',  # the API's (pydantic's model_dump_json)
        b'{"series": null, "extra": "ignored"}',
    ],
)
def test_a_backfill_request_reads_what_the_cli_and_the_api_send(sent: bytes) -> None:
    raw = json.loads(sent)
    req = decode_json(sent, BackfillRequest)
    assert (req.series, req.target_candles, req.max_pages) == (raw.get("series"), raw.get("target_candles"),
                                                               raw.get("max_pages"))  # fmt: skip


def test_a_backfill_request_is_written_as_it_always_was() -> None:
    assert json.loads(encode_json(BackfillRequest("kraken:BTC/USD:1m", 200, None))) == {
        "series": "kraken:BTC/USD:1m",
        "target_candles": 200,
        "max_pages": None,
    }


@pytest.mark.parametrize(
    "sent", [b'{"max_pages": 0}', b'{"target_candles": 1000001}', b'{"target_candles": "many"}', b"not json", b"[]"]
)
def test_a_bad_backfill_request_is_refused_with_a_reason(sent: bytes) -> None:
    with pytest.raises(ContractError, match=r"^BackfillRequest: "):
        decode_json(sent, BackfillRequest)


def test_a_backfill_reply_carries_error_only_when_refused() -> None:
    done = BackfillReply(ok=True, results=(RESULT,))
    assert json.loads(encode_json(done)) == {
        "ok": True,
        "results": [{"series": "kraken:BTC/USD:1m", "ok": True, "rows": 720, "message": "backfilled 720 candles"}],
    }
    refused = BackfillReply(ok=False, results=(), error="unknown series 'x'")
    assert json.loads(encode_json(refused)) == {"ok": False, "error": "unknown series 'x'", "results": []}
    assert decode_json(encode_json(done), BackfillReply) == done


def test_a_backfill_reply_of_the_old_ingest_still_reads() -> None:
    old = json.dumps({"ok": False, "error": "unknown series 'x'", "results": []}).encode()
    assert decode_json(old, BackfillReply) == BackfillReply(False, (), "unknown series 'x'")


# --- the heartbeat in KV health ---------------------------------------------------------------------------------


def test_a_heartbeat_is_one_flat_map_with_the_services_own_facts_beside_the_counters() -> None:
    flat = {
        "service": "hmm_regime", "replica": "1/2", "host": "host-a", "pid": 4242, "started_at": 1_700_000_000_000,
        "last_seen": 1_700_000_060_000, "handled": 900, "skipped": 12, "dead_lettered": 1,
        "last_training": {"series": "kraken:BTC/USD:1m", "at": 1_700_000_050_000, "ms": 75},
    }  # fmt: skip
    assert BEAT.to_msgpack() == msgpack.packb(flat, use_bin_type=True)  # what Health.beat always put
    assert Heartbeat.from_msgpack(msgpack.packb(flat, use_bin_type=True)) == BEAT


def test_a_service_beats_its_counters() -> None:
    metrics = Metrics.create("vol_regime")
    metrics.messages.labels("vol_regime", "handled").inc(3)
    health = Health(None, "vol_regime", "host-7-ab", metrics)  # type: ignore[arg-type]  # the KV is only for beat()
    health.extra["note"] = "x"
    health.extra["partitions"] = lambda: [0, 3]  # read at each beat
    beat = health.heartbeat()
    assert (beat.service, beat.replica, beat.handled, beat.skipped) == ("vol_regime", "host-7-ab", 3, 0)
    assert beat.extra == {"note": "x", "partitions": [0, 3]}
    assert Heartbeat.from_msgpack(beat.to_msgpack()) == beat


@pytest.mark.parametrize("data", [b"\xc1", msgpack.packb([1]), msgpack.packb({"service": "x"})])
def test_what_is_not_a_heartbeat_is_refused(data: bytes) -> None:
    with pytest.raises(ContractError):
        Heartbeat.from_msgpack(data)
