"""Round partition keys: `round-0001`, `round-0002`, ... ordered by number, never by string or time."""

from __future__ import annotations

import re
from collections.abc import Iterable

from si_assets.collection.sampling import stable_seed

ROUND_PREFIX = "round-"
_ROUND_KEY = re.compile(r"^round-(\d{4,})$")


def round_key(number: int) -> str:
    if number < 1:
        raise ValueError(f"rounds are numbered from 1, got {number}")
    return f"{ROUND_PREFIX}{number:04d}"


def round_number(key: str) -> int:
    match = _ROUND_KEY.match(key)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"{key!r} is not a round key; round partitions are named like 'round-0001'")
    return int(match.group(1))


def is_round_key(key: str) -> bool:
    match = _ROUND_KEY.match(key)
    return match is not None and int(match.group(1)) >= 1


def latest_round(existing: Iterable[str]) -> str | None:
    """The highest-numbered round key; keys that are not rounds (someone's ad-hoc partition) are ignored."""
    numbers = [int(m.group(1)) for m in map(_ROUND_KEY.match, existing) if m and int(m.group(1)) >= 1]
    return round_key(max(numbers)) if numbers else None


def next_round_key(existing: Iterable[str]) -> str:
    latest = latest_round(existing)
    return round_key(round_number(latest) + 1 if latest else 1)


def round_seed(base_seed: int, key: str) -> int:
    """Each round samples and trains with its own seed, so a round that starts from the same champion as
    the one before it (the gate refused) still draws new samples; re-running a round repeats it exactly."""
    return stable_seed(base_seed, key) % (2**31)
