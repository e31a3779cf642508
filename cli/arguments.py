"""Parsers for argument values that several commands share: P,D pairs and lists of rates."""

from __future__ import annotations


def parse_pair(text: str, what: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not two integers like 1,1") from None
    return a, b


def parse_rates(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        rates = sorted(float(r) for r in text.split(","))
    except ValueError:
        raise ValueError(f"--rates {text!r} is not a list of numbers like 1,2,4") from None
    if any(r <= 0 for r in rates):
        raise ValueError(f"--rates {text!r}: every rate must be positive")
    return rates
