"""The wire contract: what the engine, the tuner and the dashboard must agree on.

Metric names and histogram buckets on the engine's `/metrics`, the routes of the engine's split
API and the tuner's API, and the JSON shapes they exchange. Each side imports these; nothing
restates them. Pure Python, no dependencies: every room may import it.
"""

from __future__ import annotations

# -- metrics on the engine's /metrics -----------------------------------------------------------
# SGLang's own names, unchanged.
TTFT = "sglang:time_to_first_token_seconds"
TPOT = "sglang:request_time_per_output_token_seconds"
KV_USED_TOKENS = "sglang:kv_used_tokens"
KV_CAPACITY_TOKENS = "sglang:max_total_num_tokens"
CACHE_HIT_RATE = "sglang:cache_hit_rate"

# semipd's, beside them (label `worker` is "prefill" or "decode" where it applies).
SPLIT_SHARE = "semipd:split_share"
STEP_TIME = "semipd:step_time_seconds"
BATCH_SIZE = "semipd:batch_size"
QUEUE_LENGTH = "semipd:queue_length"
REPARTITIONS = "semipd:repartitions_total"
SWITCH_LATENCY = "semipd:switch_latency_seconds"
WORKER_DEATHS = "semipd:prefill_worker_deaths_total"  # label `cause`: "exited" or "hung"
WORKERS = ("prefill", "decode")

# Histogram bounds for TTFT and TPOT: finer than SGLang's defaults (0.1, 0.2, 0.4, ... s) so that
# windowed percentiles near tight SLOs are resolved. `semipd serve` gives them to the engine, the
# simulator bins its samples with them, policies read histograms cut at them.
LATENCY_BUCKETS_S = tuple(round(0.001 * 1.25 ** i, 6) for i in range(50))
STEP_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
SWITCH_BUCKETS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1)

# -- the engine's split API (semi-pd mode; a unified engine answers 404) --------------------------
SPLIT_ROUTE = "/semipd/split"      # GET: split_state(); POST split_request() -> {"applied": record, **split_state()}
STEPS_ROUTE = "/semipd/steps"      # GET ?since=UNIX_S -> {"steps": [{"worker", "start", "end", "batch_size", ...}]}
WORKERS_ROUTE = "/semipd/workers"  # GET -> {"pids": {"prefill": PID, "decode": PID}, "storage": DIR}


def split_request(prefill, decode, who: str | None = None) -> dict:
    """The body of POST /semipd/split."""
    body = {"prefill": prefill, "decode": decode}
    if who:
        body["who"] = who
    return body


def split_state(prefill: int, decode: int, *, backend: str, unit: str, units: int, valid: str,
                history: list, **extra) -> dict:
    """The body of GET /semipd/split: the split in force, the partition it lives on, and history.
    The split (units, units), each phase the whole device, is unified mode: SGLang's own loop runs
    both phases in turn and the prefill worker stands by (`"unified": true`)."""
    return {"split": {"prefill": prefill, "decode": decode}, "backend": backend, "unit": unit,
            "units": units, "unified": prefill == decode == units, "valid": valid, "history": history,
            **extra}


def read_split_state(state) -> tuple[tuple[int, int], int]:
    """((prefill, decode), units) of a GET /semipd/split body; ValueError when it has another shape."""
    try:
        split = (state["split"]["prefill"], state["split"]["decode"])
        units = state["units"]
    except (KeyError, TypeError):
        raise ValueError(f"{SPLIT_ROUTE} answered an unexpected shape: {str(state)[:200]}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (*split, units)):
        raise ValueError(f"{SPLIT_ROUTE} answered an unexpected shape: {str(state)[:200]}")
    return split, units


# -- the tuner's API (read by the dashboard); POST routes need the tuner's key when it has one ------
TUNER_STATE_ROUTE = "/state"        # GET: settings, status, split (the engine's split_state or None), windows, ...
TUNER_SETTINGS_ROUTE = "/settings"  # POST {ttft_slo_s, tpot_slo_s, policy, params, enabled, interval_s} (any subset)
TUNER_SPLIT_ROUTE = "/split"        # POST split_request(): set by hand
TUNER_AUTH_ROUTE = "/auth"          # POST {}: 200 when the request carries the tuner's key (it changes nothing)
