"""Improvement rounds (Dagster-free): round keys, the promotion gate, the champion registry, summaries."""

from si_assets.rounds.champion import ChampionRegistry, Promotion, PromotionOutcome
from si_assets.rounds.gate import GateDecision, GatePolicy, degenerate_answers, gate_decision
from si_assets.rounds.naming import ROUND_PREFIX, latest_round, next_round_key, round_key, round_number, round_seed

__all__ = [
    "ROUND_PREFIX",
    "ChampionRegistry",
    "GateDecision",
    "GatePolicy",
    "Promotion",
    "PromotionOutcome",
    "degenerate_answers",
    "gate_decision",
    "latest_round",
    "next_round_key",
    "round_key",
    "round_number",
    "round_seed",
]
