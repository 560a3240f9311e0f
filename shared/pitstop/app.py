"""Assemble the engine from the environment: the only place that knows the adapters."""

from __future__ import annotations

from pitstop.bus import Bus
from pitstop.config import Config
from pitstop.engine import Engine
from pitstop.store import Store


def build_engine(config: Config | None = None) -> Engine:
    config = config or Config.from_env()

    def cloudrun():
        from pitstop.cloudrun import CloudRun

        return CloudRun.from_endpoint(config.run_endpoint)

    def metrics():
        from pitstop.metrics import Metrics

        return Metrics.from_env()

    return Engine(config, Store.from_env(config.project), cloudrun, Bus(config.project), metrics)
