"""Structured logs and Prometheus metrics, set up the same way by every service."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy for Loki/ELK, still readable with ``jq``."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(service: str, level: str = "INFO", as_json: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nats-py logs every reconnect attempt at ERROR; the service reports that itself.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    quiet_hmmlearn()


def quiet_hmmlearn() -> None:
    """hmmlearn's log at ERROR and above only (services, their training workers and the offline commands).

    hmmlearn warns "Model is not converging" whenever an EM step lowers the log-likelihood. Under the
    sticky transition prior (HMM_TRANSITION_STICKINESS) EM climbs the posterior, not the likelihood, so
    most retrains dip by design and said so; whether a model is usable is the fit's own checks' call.
    """
    logging.getLogger("hmmlearn").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Metrics:
    """A service's Prometheus metrics, in its own registry (built in main, never global)."""

    registry: CollectorRegistry
    messages: Counter  # labels: outcome = handled | skipped | dead_lettered
    published: Counter  # labels: kind
    handle_seconds: Histogram
    last_event_ts: Gauge  # ms of the newest candle/event handled, per series
    up_since: Gauge

    def count(self, service: str, outcome: str) -> float:
        """Messages consumed with ``outcome`` so far (0 before the first)."""
        # From this one metric, not the registry: a registry read collects every metric, the per-series gauge too.
        for family in self.messages.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"service": service, "outcome": outcome}:
                    return sample.value
        return 0.0

    @classmethod
    def create(cls, service: str) -> Metrics:
        reg = CollectorRegistry()
        m = cls(
            registry=reg,
            messages=Counter(
                "regimes_messages", "Messages consumed, by outcome", ["service", "outcome"], registry=reg
            ),
            published=Counter("regimes_published", "Messages published, by kind", ["service", "kind"], registry=reg),
            handle_seconds=Histogram(
                "regimes_handle_seconds",
                "Time to handle one message, s",
                ["service"],
                buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
                registry=reg,
            ),
            last_event_ts=Gauge(
                "regimes_last_event_ts_ms", "Open time of the newest candle handled, ms", ["service", "series"],
                registry=reg,
            ),
            up_since=Gauge("regimes_up_since_seconds", "Unix time the service started", ["service"], registry=reg),
        )
        m.up_since.labels(service).set(time.time())
        return m
