"""The infrastructure the services share: the bus, the one consume loop, settings, Redis key names, telemetry."""
