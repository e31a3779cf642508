"""Who may change the system: the keys of the engine's and the tuner's control routes.

Reads stay open (health, metrics, the tuner's state); everything that changes the system (the
split, SLOs, policies, cache flushes, weight updates) needs a key once one is set, sent as
`Authorization: Bearer KEY`. A service asked to bind beyond loopback without a key refuses to
start: its controls would be open to the network.
"""

from __future__ import annotations

import hmac
import ipaddress

ADMIN_KEY_ENV = "SEMIPD_ADMIN_KEY"  # the engine's admin key (SGLang's --admin-api-key)
TUNER_KEY_ENV = "SEMIPD_TUNER_KEY"  # the tuner's control key (the dashboard's controls ask for it)


def bearer(key: str | None) -> dict:
    """The request headers that carry `key` (none without one)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def key_matches(authorization: str | None, key: str) -> bool:
    """Whether an Authorization header carries `key` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def check_exposure(host: str, key: str | None, service: str, how: str) -> None:
    """ValueError when `service` would serve its controls on `host`, beyond loopback, with no key."""
    if not key and not is_loopback(host):
        raise ValueError(f"--host {host} would open {service}'s control routes to the network without a key: "
                         f"{how}, or bind 127.0.0.1")
