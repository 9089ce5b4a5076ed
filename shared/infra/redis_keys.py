"""The Redis read model: key names, written by state_publisher only, read by dashboard_api only."""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.subjects import Names, encode_symbol


@dataclass(frozen=True, slots=True)
class RedisKeys:
    names: Names

    @property
    def symbols(self) -> str:
        """SET of series tokens with a snapshot."""
        return self.names.redis_key("symbols")

    def symbol(self, token: str) -> str:
        """JSON snapshot of one series."""
        return self.names.redis_key("symbol", token)

    def transitions(self, token: str) -> str:
        """LIST of JSON regime transitions, newest first, capped."""
        return self.names.redis_key("transitions", token)

    def history(self, token: str) -> str:
        """LIST of JSON history points (close, regimes, probabilities), oldest first, capped."""
        return self.names.redis_key("history", token)

    def consensus(self, exchange: str, symbol: str) -> str:
        """JSON consensus of one symbol across its timeframes: ``consensus:kraken.BTC-USD`` (no timeframe)."""
        return self.names.redis_key("consensus", f"{exchange}.{encode_symbol(symbol)}")

    @property
    def summary(self) -> str:
        """JSON: symbols per regime (``vol_regime_summary``) and their HMM twin."""
        return self.names.redis_key("summary")

    def position(self, consumer: str) -> str:
        """The stream sequence up to which ``consumer``'s writes are in Redis (see state_publisher.writer)."""
        return self.names.redis_key("position", consumer)

    @property
    def changes(self) -> str:
        """Pub/sub channel: a JSON notice after every batch the publisher writes."""
        return self.names.redis_key("changes")
