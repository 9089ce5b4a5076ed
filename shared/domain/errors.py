"""The two ways input can be refused: a bad message and a bad setting."""

from __future__ import annotations


class ContractError(ValueError):
    """A message that breaks its contract; ``reason`` is what goes to the dead-letter subject."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(ValueError):
    """A setting that stops start-up: names the key and says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config {key}: {reason}")
        self.key = key
        self.reason = reason
