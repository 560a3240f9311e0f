"""Assemble the engine from the environment: the only place that knows the adapters."""

from __future__ import annotations

from pitstop.gcp.bus import Bus
from pitstop.config import Config
from pitstop.engine import Engine
from pitstop.gcp.store import Store


def build_engine(config: Config | None = None) -> Engine:
    config = config or Config.from_env()

    def cloudrun():
        from pitstop.gcp.cloudrun import CloudRun

        return CloudRun.from_endpoint(config.run_endpoint)

    def metrics():
        from pitstop.gcp.metrics import Metrics

        return Metrics.from_env()

    def verifier():
        from pitstop.gcp.identity import Verifier

        return Verifier.from_env(config.project)

    def cloudbuild():
        from pitstop.gcp.cloudbuild import CloudBuild

        return CloudBuild.from_endpoint(config.build_endpoint)

    def tokens():
        """pitstop's own ID token for an audience; the sampler asks for one per sample (bound to it)."""
        from pitstop.gcp.identity import TokenSource

        return lambda audience: TokenSource(audience).token()

    def jobs():
        from pitstop.gcp.jobs import Jobs

        return Jobs.from_endpoint(config.run_endpoint)  # Cloud Run jobs: the same API as services

    def scanner():
        from pitstop.gcp.scan import Scanner

        return Scanner.from_endpoint(config.analysis_endpoint)

    return Engine(config, Store.from_env(config.project), cloudrun, Bus(config.project), metrics,
                  verifier=verifier, cloudbuild=cloudbuild, tokens=tokens, jobs=jobs, scanner=scanner)
