"""Can a verifier still see what a better model gets wrong? CLIP's whole-image view of each object clause against
region support (si_assets/verifier/regions.py), on a finished round's samples, with the `improve` labels replayed
from the world (diagnosis only: the loop never reads them).

Per object clause of the positive samples: the ROC AUC with which each signal ranks true mentions above
hallucinated ones (the usual partner of a present object, or another wrong kind). CLIP in context is the fall of
the response's score when the clause is dropped (what the hill-climb and the pick act on); region support is the
object's share of CLIP's probability in its best window. Then what the chosen side would become with the clauses
of low region support dropped from CLIP's chosen captions, and the grounded consensus
(si_assets/organization/support.py) that `region_caption: consensus` trains towards instead.

`--start-from ROUND` first runs `--round` as a round whose policy is ROUND's trained model (whether or not the
gate promoted it), with the round settings of `--config`, so a second round can be examined on a machine whose
first round was refused. It needs DAGSTER_HOME and SI_STORE of that store.

    .venv/bin/python bench/region_support.py [--store .si_store] [--round round-0001] [--clip FOLDER]
        [--start-from round-0001 [--config bench/configs/region_support_add.yaml]]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402
from pair_diagnostics import clause_drops, load_round, oracle_pick  # noqa: E402

from si_assets.organization.segments import join_segments, segment_positions, segment_texts  # noqa: E402
from si_assets.organization.support import grounded_consensus, region_support_of  # noqa: E402
from si_assets.organization.verification import clip_score_fn  # noqa: E402
from si_assets.verifier.regions import object_support, rank_auc  # noqa: E402

THRESHOLDS = (0.1, 0.2, 0.3)
ADDED = ((0.2, 0.5), (0.2, 0.7), (0.2, 0.9))  # (cut below, add the samples' segments from)
CONSENSUS = ((0.25, 0.5), (0.375, 0.5), (0.5, 0.5), (0.375, 0.8))  # (share of the samples, region support)


def run_from_trained(store_dir: Path, key: str, trained_round: str, config: dict) -> None:
    """Runs round `key` with `trained_round`'s trained model as its policy and the round `config` (a run config), unless
    `key` is in the store already and no config is given."""
    import dagster as dg

    from si_assets.automation.runner import run_round
    from si_assets.definitions import defs
    from si_assets.storage import ArtifactStore

    store = ArtifactStore(store_dir)
    if store.head("verified_pairs", key) is not None and not config:
        return
    trained = store.head("trained_model", trained_round)
    if trained is None:
        raise SystemExit(f"no trained_model {trained_round} in {store_dir}")
    ops = dict(config.get("ops", {}))
    ops["seed_checkpoint"] = {"config": {"base": str(store.local_checkpoint(trained).path)}}
    with dg.DagsterInstance.get() as instance:
        run = run_round(defs, instance, key, {**config, "ops": ops})
    print(f"{key} from {trained_round}'s trained model: promotion gate {'refused' if run.refused else 'passed'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SI_STORE", ".si_store")))
    parser.add_argument("--round", default="round-0001")
    parser.add_argument("--start-from", help="run --round first, from this round's trained model")
    parser.add_argument("--config", type=Path, help="with --start-from: the round's run config (YAML)")
    parser.add_argument("--clip", type=Path, help="an open_clip folder to judge with (default: the bootstrap CLIP)")
    parser.add_argument("--window", type=float, default=1 / 3, help="window side as a share of the image side")
    args = parser.parse_args()
    if args.start_from:
        config = yaml.safe_load(args.config.read_text()) if args.config else {}
        run_from_trained(args.store, args.round, args.start_from, config)

    labels, samples, _, pairs, images, scorer = load_round(args.store, args.round, args.clip)
    round_ids = samples["image_id"].unique(maintain_order=True).to_list()
    score = clip_score_fn(scorer, images, round_ids, "sentence_mean")
    kinds, drop, where = clause_drops(labels, samples, score)

    phrases = sorted({clause.rstrip(".") + "." for _, clause in where})
    support, objects = object_support(
        scorer,
        [images[i] for i in round_ids],
        phrases,
        [labels.vocab.mentions(p)[0] for p in phrases],
        args.window,
    )
    row, column = {i: k for k, i in enumerate(round_ids)}, {o: k for k, o in enumerate(objects)}

    def support_of(image_id: str, clause: str) -> float:
        named = labels.vocab.mentions(clause)
        return float(support[row[image_id], column[named[0]]]) if len(named) == 1 and named[0] in column else 1.0

    region = np.array([support_of(image_id, clause) for image_id, clause in where])
    partner = np.char.startswith(kinds.astype(str), "partner")
    true, other = kinds == "true", kinds == "other"
    print(f"{args.round}: {len(round_ids)} images, {len(kinds)} object clauses in responses of 2+ clauses")
    print("ROC AUC, true clauses above hallucinated ones:      partner   other kinds")
    for name, values in (("CLIP in context (score fall when dropped)", drop), ("region support", region)):
        partner_auc, other_auc = rank_auc(values[true], values[partner]), rank_auc(values[true], values[other])
        print(f"  {name:<45} {partner_auc:.3f}     {other_auc:.3f}")

    print("chosen side (kept and reversed caption pairs):")
    ids, chosen = pairs["image_id"].to_list(), pairs["chosen"].to_list()
    print(f"  {'CLIP chosen':<42} {labels.summary(ids, chosen)}")
    for threshold in THRESHOLDS:
        edited = []
        for image_id, text in zip(ids, chosen):
            kept = [c for c in segment_texts(text) if support_of(image_id, c) >= threshold]
            edited.append(join_segments(kept) if kept else text)  # nothing supported: left as it is
        print(f"  {f'  with clauses of support < {threshold} dropped':<42} {labels.summary(ids, edited)}")
    pool: dict[str, dict[str, float]] = {}
    for (image_id,), group in samples.group_by("image_id", maintain_order=True):
        pool[image_id] = segment_positions(group["response"].to_list())
    for threshold, added in ADDED:
        edited = []
        for image_id, text in zip(ids, chosen):
            kept = [c for c in segment_texts(text) if support_of(image_id, c) >= threshold] or segment_texts(text)
            named = {tuple(labels.vocab.mentions(c)) for c in kept}
            extra = {}
            for segment in pool.get(image_id, {}):
                key = tuple(labels.vocab.mentions(segment))
                if len(key) == 1 and key not in named and support_of(image_id, segment) >= added:
                    if key not in extra or support_of(image_id, segment) > support_of(image_id, extra[key]):
                        extra[key] = segment
            parts = sorted([*kept, *extra.values()], key=lambda c: pool.get(image_id, {}).get(c, 99.0))
            edited.append(join_segments(parts))
        label = f"  cut < {threshold}, samples' segments >= {added} added"
        print(f"  {label:<42} {labels.summary(ids, edited)}")
    texts: dict[str, list[str]] = {}  # the phrases the round's edit classifies windows among: pairs, then samples
    for image_id, chosen_text, rejected in pairs.select("image_id", "chosen", "rejected").iter_rows():
        texts.setdefault(image_id, []).extend([chosen_text, rejected])
    for image_id, response in samples.select("image_id", "response").iter_rows():
        texts.setdefault(image_id, []).append(response)
    product_support = region_support_of(scorer, images, texts, args.window)  # as the round computes it
    for share, least in CONSENSUS:
        consensus = grounded_consensus(samples, product_support, least, share)
        label = f"  grounded consensus: share >= {share:g}, support >= {least}"
        print(f"  {label:<42} {labels.summary(ids, [consensus.get(i, c) for i, c in zip(ids, chosen)])}")
    oracle = oracle_pick(labels, samples.filter(pl.col("image_id").is_in(round_ids)))
    print(f"  {'oracle pick among the samples':<42} {labels.summary(*oracle)}")


if __name__ == "__main__":
    main()
