"""Warm starts: after a data-organization change (a new `margin`, say) most of a round's pairs are the ones the
previous adapter already learned, so it continues from that adapter on what changed instead of training anew.

The previous adapter carries a record of what it learned from (the seed's version, the trainer's settings, the
content key of every pair). A new pair set is compared with it by content: pairs only in the new set are *added*,
pairs only in the old one *removed*. When the changed share stays under `warm_start_max_change`, the adapter trains
`epochs` epochs on the added pairs plus as many unchanged pairs, drawn at random, as the larger of added and
removed: the added pairs get the passes a full training gives them, and the replayed ones pull the adapter toward
the new set's balance where pairs left it. It trains at a tenth of the learning rate (`warm_start_lr_scale`): at the
full rate a new schedule on so few rows pulls the adapter away from what it learned, and costs POPE F1 that an update
trained from the seed keeps (docs/benchmarks.md). The DPO reference stays the seed, as in a full training.

A warm-started adapter depends on its predecessor as well as on its pairs; the asset's metadata names both.
`warm_start_max_change: 0` always trains from the seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from si_assets.optimization.reference_cache import PAIR_KEY, with_pair_keys

TRAINED_ON = "trained_on.json"  # in the adapter folder: what the adapter learned from


@dataclass(frozen=True)
class TrainedOn:
    """What an adapter was trained from: the seed, the trainer's settings and the pairs (by content)."""

    seed_version: str
    settings_key: str
    pair_keys: frozenset[str]

    def write(self, adapter_dir: Path) -> None:
        record = {
            "seed_version": self.seed_version,
            "settings_key": self.settings_key,
            "pair_keys": sorted(self.pair_keys),
        }
        (Path(adapter_dir) / TRAINED_ON).write_text(json.dumps(record))

    @classmethod
    def read(cls, adapter_dir: Path) -> TrainedOn | None:
        """The record, or None for an adapter without one (trained before records were kept, or elsewhere)."""
        path = Path(adapter_dir) / TRAINED_ON
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return cls(record["seed_version"], record["settings_key"], frozenset(record["pair_keys"]))

    @classmethod
    def of(cls, seed_version: str, settings_key: str, pairs: pl.DataFrame) -> TrainedOn:
        return cls(seed_version, settings_key, frozenset(with_pair_keys(pairs)[PAIR_KEY].to_list()))


@dataclass(frozen=True)
class WarmStart:
    """The decision for one training: continue `adapter_dir` on `rows`, or (rows None) train from the seed."""

    reason: str
    adapter_dir: Path | None = None
    rows: pl.DataFrame | None = None
    added: int = 0
    removed: int = 0
    replayed: int = 0
    learning_rate: float | None = None  # the rate it continues at

    @property
    def warm(self) -> bool:
        return self.rows is not None


def plan_warm_start(
    pairs: pl.DataFrame,
    target: TrainedOn,
    previous_adapter: Path | None,
    max_change: float,
    seed: int,
    learning_rate: float,
) -> WarmStart:
    """Whether training `pairs` (as the trainer sees them) can continue the previous adapter, on which rows, and at
    which `learning_rate` (a fraction of a full training's)."""
    if max_change <= 0:
        return WarmStart("warm starts are off (warm_start_max_change 0)")
    if previous_adapter is None:
        return WarmStart("no earlier adapter for this round")
    previous = TrainedOn.read(previous_adapter)
    if previous is None:
        return WarmStart("the earlier adapter has no record of its pairs")
    if previous.seed_version != target.seed_version:
        return WarmStart("the earlier adapter was trained on another seed")
    if previous.settings_key != target.settings_key:
        return WarmStart("the earlier adapter was trained with other settings")
    keyed = with_pair_keys(pairs)
    is_added = ~pl.col(PAIR_KEY).is_in(list(previous.pair_keys))
    added, unchanged = keyed.filter(is_added), keyed.filter(~is_added)
    removed = len(previous.pair_keys - target.pair_keys)
    if added.height == 0 and removed == 0:
        return WarmStart("the pairs are the ones the earlier adapter learned: trained again from the seed")
    share = (added.height + removed) / max(len(previous.pair_keys), 1)
    if share > max_change:
        return WarmStart(f"{share:.0%} of the pairs changed (warm starts up to {max_change:.0%})")
    replay = unchanged.sort(PAIR_KEY).sample(min(max(added.height, removed), unchanged.height), seed=seed)
    rows = pl.concat([added, replay]).drop(PAIR_KEY)
    return WarmStart(
        f"{share:.1%} of the pairs changed: continuing the earlier adapter at learning rate {learning_rate:g}",
        Path(previous_adapter),
        rows,
        added.height,
        removed,
        replay.height,
        learning_rate,
    )
