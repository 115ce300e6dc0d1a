"""Yes/no probe pairs: the verified caption pairs restated as the questions POPE asks, judge-free.

A round that trains on captions alone also moves how the model answers "Is there a X in the image?": every DPO
variant ended up answering yes to nearly every question (docs/results.md, "Yes/no probes"). The caption pairs already
say which mentions the verifier accepted, so they are restated per object: an object the image's best chosen
response names gets the pair ('yes.' over 'no.'); an object only its rejected responses name gets ('no.' over
'yes.'). No labels and no judge: the answers are the CLIP-verified captions' own mentions. A few per image suffice
(each costs a training step's share, like a caption pair), as balanced between the two answers as the image
allows.

An object is a segment's head noun: its last word, singular ("a red circle" -> "circle"). Like composition this
is meant for list-like captions; segments longer than a noun phrase (free prose) ask nothing.
"""

from __future__ import annotations

from itertools import zip_longest

import numpy as np
import polars as pl

from si_assets.collection.sampling import stable_seed
from si_assets.evaluation.metrics import POPE_PROMPT, singular_words
from si_assets.organization.segments import segment_spans

YES, NO = "yes.", "no."
PROBE = "probe"
MAX_NOUN_PHRASE_WORDS = 4  # "a small red circle"; longer segments are clauses, not mentions


def mentioned_objects(text: str) -> list[str]:
    """The head noun of each noun-phrase segment, in order, each once."""
    found: dict[str, None] = {}
    for start, end in segment_spans(text):
        phrase = singular_words(text[start:end])
        if 1 <= len(phrase) <= MAX_NOUN_PHRASE_WORDS:
            found[phrase[-1]] = None
    return list(found)


def probe_pairs(pairs: pl.DataFrame, per_image: int, seed: int = 0, prompt: str = POPE_PROMPT) -> pl.DataFrame:
    """Per image of the training `pairs` (image_id, rank, chosen, rejected), up to `per_image` questions: objects
    the chosen response of its first-ranked pair names (with CLIP, the best-scored candidate), asked with 'yes.'
    winning, and objects that only its rejected responses name (no chosen one does), with 'no.' winning. Answers
    alternate while the image has both, the first by a coin; objects are drawn at random (per image and `seed`).
    `pair_id` is `<image_id>/probe/<object>`; `object` and `answer` say what was asked and which answer won."""
    rows: list[tuple[str, str, str, str, str]] = []
    for (image_id,), group in pairs.group_by("image_id", maintain_order=True):
        best = group.sort("rank", maintain_order=True)["chosen"][0]
        named = {o for text in group["chosen"] for o in mentioned_objects(text)}
        present = mentioned_objects(best)
        absent = list(dict.fromkeys(o for t in group["rejected"] for o in mentioned_objects(t) if o not in named))
        rng = np.random.default_rng(stable_seed("probes", seed, image_id))
        yes = [(o, YES, NO) for o in rng.permutation(present).tolist()] if present else []
        no = [(o, NO, YES) for o in rng.permutation(absent).tolist()] if absent else []
        first, second = (yes, no) if rng.random() < 0.5 else (no, yes)
        alternating = [q for both in zip_longest(first, second) for q in both if q is not None]
        rows += [(image_id, o, chosen, rejected, chosen) for o, chosen, rejected in alternating[:per_image]]
    schema = dict.fromkeys(("image_id", "object", "chosen", "rejected", "answer"), pl.String)
    probes = pl.DataFrame(rows, schema=schema, orient="row")
    return probes.with_columns(
        prompt=pl.format(prompt.replace("{object}", "{}"), "object"),
        pair_id=pl.format("{}/" + PROBE + "/{}", "image_id", "object"),
    )
