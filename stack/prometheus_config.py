"""Prometheus's configuration for a stack on this machine: deploy/prometheus/prometheus.yml (the
compose stack's, with its relabelling) with loopback targets: every engine, every tuner, and a
fleet's router."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOYED = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "prometheus.yml"


def scrape_config(engines: list[str], tuners: list[str], router: str | None = None,
                  interval: str = "2s") -> dict:
    """The deployed configuration scraping `engines` and `tuners` (and `router`'s metrics), each a
    host:port as the tuners write their --engine URL (their instance label selects its series)."""
    config = yaml.safe_load(DEPLOYED.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    targets = {"semipd-engine": engines, "semipd-tuner": tuners, "semipd-router": [router] if router else []}
    config["scrape_configs"] = [job for job in config["scrape_configs"] if targets[job["job_name"]]]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": targets[job["job_name"]]}]
    return config
