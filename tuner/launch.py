"""The tuner service put together and started (`semipd tune`): a Tuner on an engine, its metrics
read from the engine or from Prometheus, its SQLite store, and its HTTP API serving on a thread."""

from __future__ import annotations

from policies import load_params
from tuner.control_loop import Settings, Tuner
from tuner.engine_client import EngineClient
from tuner.http_api import serve
from tuner.prometheus_source import PrometheusSource
from tuner.search import best_params
from tuner.store import TunerStore


def policy_params(policy: str, params_path: str | None = None, study: str | None = None,
                  storage: str | None = None) -> dict:
    """The policy's parameters: its defaults, overridden by a file (as `semipd search` writes it)
    or by the best trial of an Optuna study in `storage`."""
    params = load_params(policy, params_path)
    if study:
        params = load_params(policy, overrides=best_params(study, storage))
    return params


def start_tuner(engine_url: str, settings: Settings, store_path: str, host: str, port: int,
                admin_key: str | None = None, prometheus_url: str | None = None, fresh: bool = False,
                key: str | None = None):
    """(tuner, its HTTP server, already serving); `tuner.run(stop)` runs the loop until `stop` is set.
    A store holding settings resumes them unless `fresh`. `admin_key` is the engine's; `key` the
    tuner's own, required on its control routes when given."""
    engine = EngineClient(engine_url, admin_key)
    source = PrometheusSource(prometheus_url, engine_url) if prometheus_url else None
    tuner = Tuner(engine, TunerStore(store_path), settings, source, fresh=fresh)
    return tuner, serve(tuner, host, port, key)
