"""Why a round gains what it gains: where the hallucinations in a round's responses and pairs come from, and
how well the verifier sees them. Reads a finished round from the store (`make demo` writes round-0001) and
the `improve` labels replayed from the world (diagnosis only: the loop never reads them).

A hallucinated mention is a "partner" when it names the usual companion of an object in the image (the
prior the caption noise teaches), else "other" (a wrong kind). CLIP's view is measured per object clause:
drop one clause ("a red square") from a response and see whether CLIP's score falls (the clause was
supported) or rises (CLIP sees it as a hallucination).

    .venv/bin/python bench/pair_diagnostics.py [--store .si_store] [--round round-0001] [--clip FOLDER] [--world JSON]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from si_assets.evaluation.metrics import ObjectVocabulary  # noqa: E402
from si_assets.organization.probes import PROBE  # noqa: E402
from si_assets.organization.segments import join_segments, segment_texts  # noqa: E402
from si_assets.organization.verification import CAPTION, clip_score_fn  # noqa: E402
from si_assets.storage import ArtifactStore  # noqa: E402
from si_assets.verifier.clip import ClipScorer, load_clip  # noqa: E402
from si_assets.world import WorldSpec, decode_png, improve_ground_truth  # noqa: E402


class Labels:
    """Ground truth of `improve` and the kind of each hallucinated mention."""

    def __init__(self, spec: WorldSpec) -> None:
        self.truth = {i: set(objects) for i, objects in improve_ground_truth(spec).items()}
        self.vocab = ObjectVocabulary.from_kinds(spec.kinds)
        self.partner = spec.partner

    def kind(self, image_id: str, mention: str) -> str:
        present = self.truth[image_id]
        if mention in present:
            return "true"
        return "partner" if any(self.partner.get(p) == mention for p in present) else "other"

    def quality(self, image_id: str, text: str) -> tuple[float, int]:
        """(precision, correct mentions) of one response."""
        mentions = self.vocab.mentions(text)
        hits = len(set(mentions) & self.truth[image_id])
        return hits / max(1, len(mentions)), hits

    def absent_partners(self, image_id: str) -> set[str]:
        present = self.truth[image_id]
        return {self.partner[p] for p in present if p in self.partner} - present

    def summary(self, image_ids: list[str], texts: list[str]) -> str:
        counts: Counter = Counter()
        for image_id, text in zip(image_ids, texts):
            mentions = self.vocab.mentions(text)
            counts.update(self.kind(image_id, m) for m in mentions)
            counts["mentions"] += len(mentions)
            counts["objects"] += len(self.truth[image_id])
        n = len(texts)
        return (
            f"P {counts['true'] / counts['mentions']:.3f}  R {counts['true'] / counts['objects']:.3f}  "
            f"mentions/caption {counts['mentions'] / n:.2f}  hallucinated/caption: partner "
            f"{counts['partner'] / n:.3f}, other {counts['other'] / n:.3f}"
        )


def oracle_pick(labels: Labels, samples: pl.DataFrame) -> tuple[list[str], list[str]]:
    """Per image, the most precise sample (then the one with most correct mentions): the ceiling of any pick."""
    ids, texts = [], []
    for (image_id,), group in samples.group_by("image_id", maintain_order=True):
        ids.append(image_id)
        texts.append(max(group["response"].to_list(), key=lambda text: labels.quality(image_id, text)))
    return ids, texts


def partner_habit(labels: Labels, samples: pl.DataFrame, chosen: dict[str, str]) -> str:
    """On images whose usual companion is absent: how often samples and the chosen response name it."""
    rates, chosen_names = [], []
    for (image_id,), group in samples.group_by("image_id"):
        absent = labels.absent_partners(image_id)
        if not absent:
            continue
        rates.append(np.mean([bool(set(labels.vocab.mentions(t)) & absent) for t in group["response"]]))
        chosen_names.append(bool(set(labels.vocab.mentions(chosen[image_id])) & absent))
    rates_ = np.array(rates)
    return (
        f"{len(rates_)} images lack a present object's partner: samples name it {rates_.mean():.1%} of the time; "
        f"every sample names it on {(rates_ == 1).mean():.1%} of them, none on {(rates_ == 0).mean():.1%}; "
        f"the chosen response names it on {np.mean(chosen_names):.1%}"
    )


def clause_drops(labels: Labels, samples: pl.DataFrame, score) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Per object clause of the samples (responses with two or more clauses): its mention kind, how much CLIP's
    score falls when the clause is dropped, and (image id, clause). A hallucinated partner is an "addition" when
    the response also names every present object, else a "substitution" (it stands for a present object of
    another kind)."""
    ids, texts = samples["image_id"].to_list(), samples["response"].to_list()
    full = score(ids, texts)
    owners, shorter, kinds, where = [], [], [], []
    for k, (image_id, text) in enumerate(zip(ids, texts)):
        parts = segment_texts(text)
        named = set(labels.vocab.mentions(text))
        for j, part in enumerate(parts if len(parts) > 1 else []):
            mention = labels.vocab.mentions(part)
            if len(mention) != 1:
                continue
            kind = labels.kind(image_id, mention[0])
            if kind == "partner":
                kind += " (addition)" if labels.truth[image_id] <= named else " (substitution)"
            owners.append(k)
            shorter.append(join_segments(parts[:j] + parts[j + 1 :]))
            kinds.append(kind)
            where.append((image_id, part))
    drop = full[owners] - score([ids[k] for k in owners], shorter)
    return np.array(kinds), drop, where


def clause_support(labels: Labels, samples: pl.DataFrame, score) -> dict[str, tuple[int, float]]:
    """Per mention kind: (count, share of clauses whose removal lowers CLIP's score)."""
    kinds, drop, _ = clause_drops(labels, samples, score)
    return {k: (int((kinds == k).sum()), float((drop[kinds == k] > 0).mean())) for k in sorted(set(kinds))}


def load_round(
    store_dir: Path, round_key: str, clip: Path | None = None, world: dict | None = None
) -> tuple[Labels, pl.DataFrame, pl.DataFrame, pl.DataFrame, dict, ClipScorer]:
    """(labels, positive samples, negatives, kept or reversed caption pairs, `improve` images by id, the CLIP
    scorer) of a finished round in the store; the bootstrap CLIP unless `clip` names an open_clip folder."""
    store = ArtifactStore(store_dir)

    def table(asset: str, partition: str | None = None) -> pl.DataFrame:
        head = store.head(asset, partition)
        if head is None:
            raise SystemExit(f"no {asset} {partition or ''} in {store_dir}: run `make demo` first")
        return store.read_table(head)

    pairs = table("verified_pairs", round_key).filter(pl.col("decision") != "discarded")
    if "task" in pairs.columns:  # the caption pairs; the yes/no probes restate them, the other tasks edit them
        pairs = pairs.filter(pl.col("task") == CAPTION)
    clip_dir = clip or Path(store.local_checkpoint(store.head("bootstrap_clip")).path)
    improve = table("world_improve")
    images = {i: decode_png(b) for i, b in zip(improve["id"], improve["image_png"])}
    return (
        Labels(WorldSpec(**(world or {}))),
        table("sampled_responses", round_key),
        table("hallucinated_negatives", round_key),
        pairs,
        images,
        ClipScorer(*load_clip(str(clip_dir))),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    parser.add_argument("--round", default="round-0001")
    parser.add_argument("--clip", type=Path, help="an open_clip folder to judge with (default: the bootstrap CLIP)")
    parser.add_argument("--world", type=json.loads, default={}, help="WorldConfig overrides of the store's world")
    args = parser.parse_args()

    labels, samples, negatives, pairs, images, scorer = load_round(args.store, args.round, args.clip, args.world)
    score = clip_score_fn(scorer, images, list(images), "sentence_mean")

    print(f"{args.round}: {samples.height} positives, {negatives.height} negatives, {pairs.height} pairs")
    rows = {
        "positive samples": (samples["image_id"].to_list(), samples["response"].to_list()),
        "negatives (h_neg)": (negatives["image_id"].to_list(), negatives["response"].to_list()),
        "chosen (CLIP-best)": (pairs["image_id"].to_list(), pairs["chosen"].to_list()),
        "rejected": (pairs["image_id"].to_list(), pairs["rejected"].to_list()),
        "oracle pick": oracle_pick(labels, samples),
    }
    store = ArtifactStore(args.store)
    every = store.read_table(store.head("verified_pairs", args.round)).filter(pl.col("decision") != "discarded")
    edits = every.filter(~pl.col("task").is_in([CAPTION, PROBE])) if "task" in every.columns else every.clear()
    for task, added in edits.group_by("task", maintain_order=True) if edits.height else ():
        for side in ("chosen", "rejected"):  # region: the grounded consensus or cut caption; omission: one object less
            rows[f"{task[0]} {side}"] = (added["image_id"].to_list(), added[side].to_list())
    for name, (ids, texts) in rows.items():
        print(f"  {name:<20} {labels.summary(ids, texts)}")
    print("  " + partner_habit(labels, samples, dict(zip(pairs["image_id"], pairs["chosen"]))))
    print("CLIP per clause (positive samples): share of clauses whose removal lowers the score")
    for kind, (count, supported) in clause_support(labels, samples, score).items():
        print(f"  {kind:<24} {count:>6} clauses  {supported:.1%}")


if __name__ == "__main__":
    main()
