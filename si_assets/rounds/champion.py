"""The champion registry: which model each round promoted, kept as a named pointer in the artifact store.

The champion is never "the latest trained model": it is the record a passing round wrote here. Round k is
seeded by the last promotion of a round before k, so re-running round k repeats it with the same seed even
after later rounds have promoted. The whole history is one JSON document, replaced atomically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import polars as pl

from si_assets.rounds.naming import round_number
from si_assets.storage.store import ArtifactStore, Checkpoint, StoredArtifact

if TYPE_CHECKING:
    from si_assets.storage.lakefs_store import LakeFSArtifactStore

POINTER = "champion"


@dataclass(frozen=True)
class Promotion:
    round: str  # the round whose trained model this is
    version: str  # its data version (the store folder's name)
    uri: str  # where the checkpoint lives in the store
    content_hash: str
    seed_version: str  # the model the round started from
    metrics: dict[str, float]  # held-out eval of the promoted model
    base_metrics: dict[str, float]  # eval of the model round 1 started from, carried along for the gate
    run_id: str = ""
    promoted_at: str = ""
    ref: str = ""  # where the store pins it (lakeFS: the champion tag); "" in a plain folder
    eval_data: str = ""  # the version of the evaluation data its metrics (and base_metrics) were measured on

    def __post_init__(self) -> None:
        round_number(self.round)  # validates the key

    @property
    def artifact(self) -> StoredArtifact:
        return StoredArtifact("checkpoint", self.uri, self.content_hash)


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    reason: str
    champion: Promotion | None  # the champion after the attempt
    history: list[Promotion] = field(default_factory=list)

    def record(self, candidate: Promotion) -> pl.DataFrame:
        """One row: the candidate, whether it was promoted and why, and the champion after the attempt."""
        current = self.champion
        return pl.DataFrame(
            {
                "round": [candidate.round],
                "promoted": [self.promoted],
                "reason": [self.reason],
                "candidate_version": [candidate.version],
                "champion_round": [current.round if current else None],
                "champion_version": [current.version if current else None],
                "precision": [candidate.metrics["precision"]],
                "recall": [candidate.metrics["recall"]],
            }
        )

    def history_table(self) -> pl.DataFrame:
        return pl.DataFrame(
            [{"round": p.round, "version": p.version, "precision": p.metrics["precision"]} for p in self.history]
        )


class ChampionRegistry:
    def __init__(self, store: ArtifactStore | LakeFSArtifactStore) -> None:
        self.store = store

    def history(self) -> list[Promotion]:
        """Every round's promotion (at most one per round), in round order."""
        pointer = self.store.read_pointer(POINTER) or {"history": []}
        return sorted((Promotion(**p) for p in pointer["history"]), key=lambda p: round_number(p.round))

    def current(self) -> Promotion | None:
        history = self.history()
        return history[-1] if history else None

    def champion_before(self, round_key: str) -> Promotion | None:
        """The seed of `round_key`: the last promotion of an earlier round (None: start from the base)."""
        number = round_number(round_key)
        earlier = [p for p in self.history() if round_number(p.round) < number]
        return earlier[-1] if earlier else None

    def checkpoint(self, promotion: Promotion) -> Checkpoint:
        """The promoted checkpoint, read through the ref that pins it (lakeFS: the champion tag)."""
        return self.store.local_checkpoint(self.store.artifact_at(promotion.artifact, promotion.ref))

    def promote(self, candidate: Promotion) -> PromotionOutcome:
        """Record `candidate` (which already passed its gate) as champion unless that would break the chain:
        a later round already built on this round's result, the round's seed is no longer the champion
        before it, or the same round already promoted a more precise model."""
        history = self.history()
        number = round_number(candidate.round)
        later = [p.round for p in history if round_number(p.round) > number]
        if later:
            return self._refused(history, f"{later[-1]} already promoted a model built after {candidate.round}")
        expected = self.champion_before(candidate.round)
        if expected is not None and candidate.seed_version != expected.version:
            return self._refused(
                history,
                f"{candidate.round} started from {candidate.seed_version}, but the champion before it is now "
                f"{expected.version} ({expected.round}); run the round again",
            )
        same_round = next((p for p in history if p.round == candidate.round), None)
        if same_round is not None:
            if same_round.version == candidate.version:
                return PromotionOutcome(True, "already the champion", same_round, history)
            if candidate.metrics["precision"] <= same_round.metrics["precision"]:
                return self._refused(
                    history,
                    f"{candidate.round} already promoted {same_round.version} with precision "
                    f"{same_round.metrics['precision']:.3f} >= {candidate.metrics['precision']:.3f}",
                )
        # Publish first (lakeFS: merge the round's branch and tag it); a failure here leaves the pointer as it was.
        candidate = replace(candidate, ref=self.store.mark_champion(candidate.round))
        history = [p for p in history if p.round != candidate.round] + [candidate]
        history.sort(key=lambda p: round_number(p.round))
        self.store.write_pointer(POINTER, {"history": [asdict(p) for p in history]})
        reason = "replaced this round's earlier champion" if same_round else "promoted"
        return PromotionOutcome(True, reason, candidate, history)

    @staticmethod
    def _refused(history: list[Promotion], reason: str) -> PromotionOutcome:
        return PromotionOutcome(False, reason, history[-1] if history else None, history)
