"""The tooling on top: the `regimes` command, the supervisor, embedded servers, file feeds and the backtest."""
