"""What a round learns to leave out: the net push of its pairs on each object's name (chosen-side minus
rejected-side mentions, `name_push` in the pairs' metadata), against how often the trained model names that kind
on `dev` where it is present and where it is not, next to its seed. Reads finished rounds from the stores (one per
setting, e.g. copies of the store `bench/demo_footprint.py --keep DIR` leaves) and the `dev` labels (diagnosis only:
the loop never reads them).

    .venv/bin/python bench/name_push.py --store DIR [--store DIR ...] [--round round-0001]
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402

from si_assets.evaluation.metrics import ObjectVocabulary  # noqa: E402
from si_assets.modeling.generation import generate_greedy  # noqa: E402
from si_assets.modeling.loading import load_checkpoint  # noqa: E402
from si_assets.organization.balance import name_push  # noqa: E402
from si_assets.organization.probes import PROBE  # noqa: E402
from si_assets.organization.verification import training_pairs  # noqa: E402
from si_assets.storage import ArtifactStore  # noqa: E402
from si_assets.world import EVAL_PROMPT, WorldSpec, decode_png  # noqa: E402


def mention_counts(captions: list[str], truths: list[set[str]], vocab: ObjectVocabulary) -> tuple[Counter, Counter]:
    """Per kind: captions naming it where it is present, and where it is not."""
    present, absent = Counter(), Counter()
    for caption, truth in zip(captions, truths):
        for obj in set(vocab.mentions(caption)):
            (present if obj in truth else absent)[obj] += 1
    return present, absent


def precision_recall(named: list[list[str]], truths: list[set[str]]) -> str:
    """Object precision and recall of captions by the objects they name, in order."""
    hits = sum(len(set(objects) & truth) for objects, truth in zip(named, truths))
    mentions, present = sum(map(len, named)), sum(map(len, truths))
    return f"P {hits / mentions:.3f}, R {hits / present:.3f}, {mentions / len(named):.2f} objects per caption"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, action="append", required=True, help="a store with the round")
    parser.add_argument("--round", default="round-0001")
    args = parser.parse_args()
    torch.manual_seed(0)
    vocab = ObjectVocabulary.from_kinds(WorldSpec().kinds)
    first = ArtifactStore(args.store[0])
    dev = first.read_table(first.head("world_dev"))
    images = [decode_png(b) for b in dev["image_png"]]
    truths = [set(objects) for objects in dev["objects"]]
    captions: dict[str, list[str]] = {}  # checkpoint uri -> dev captions

    def captioned(uri: str) -> list[str]:
        if uri not in captions:
            model, processor = load_checkpoint(uri, torch.device("cpu"), torch.float32)
            captions[uri] = generate_greedy(model, processor, images, [EVAL_PROMPT] * len(images), 32, 64)
        return captions[uri]

    for store_dir in args.store:
        store = ArtifactStore(store_dir)
        pairs = training_pairs(store.read_table(store.head("verified_pairs", args.round)))
        push = name_push(pairs.filter(pl.col("task") != PROBE))
        seed = mention_counts(captioned(store.head("seed_checkpoint", args.round).uri), truths, vocab)
        trained = mention_counts(captioned(store.head("trained_model", args.round).uri), truths, vocab)
        kinds = sorted(seed[0], key=lambda k: push[k])
        print(f"\n{store_dir} {args.round}: {pairs.filter(pl.col('task') != PROBE).height} pairs (probes aside)")
        print("| object | net push | present: named by seed → trained | absent: named by seed → trained |")
        print("|---|---|---|---|")
        for k in kinds:
            print(
                f"| {k} | {push[k]:+d} | {seed[0][k]} → {trained[0][k]} ({trained[0][k] - seed[0][k]:+d}) "
                f"| {seed[1][k]} → {trained[1][k]} ({trained[1][k] - seed[1][k]:+d}) |"
            )
        named = [list(dict.fromkeys(vocab.mentions(c))) for c in captioned(store.head("trained_model", args.round).uri)]
        print(f"trained model on dev: {precision_recall(named, truths)}")
        change = [trained[0][k] - seed[0][k] for k in kinds]
        r = np.corrcoef([push[k] for k in kinds], change)[0, 1]
        print(f"correlation of net push and the change in present objects named, over kinds: {r:+.2f}")
    # A round that only learned to stop earlier would be no better than its seed's captions cut short.
    seed_uri = ArtifactStore(args.store[0]).head("seed_checkpoint", args.round).uri
    named = [list(dict.fromkeys(vocab.mentions(c))) for c in captioned(seed_uri)]
    print(f"\nthe seed on dev: {precision_recall(named, truths)}; its captions cut to their first k objects:")
    for k in (4, 3, 2):
        print(f"  k = {k}: {precision_recall([objects[:k] for objects in named], truths)}")


if __name__ == "__main__":
    main()
