"""Yes/no probe pairs: the verified caption pairs restated as the questions POPE asks, judge-free.

A round that trains on captions alone also moves how the model answers "Is there a X in the image?": every DPO
variant ended up answering yes to nearly every question (docs/round_experiments.md §12). The caption pairs already
say which mentions the verifier accepted, so they are restated per object: an object the image's chosen responses
name gets the pair ('yes.' over 'no.'); an object only its rejected responses name gets ('no.' over 'yes.'). No
labels and no judge: the answers are the CLIP-verified captions' own mentions.

An object is a segment's head noun: its last word, singular ("a red circle" -> "circle"). Like composition this
is meant for list-like captions; segments longer than a noun phrase (free prose) ask nothing.
"""

from __future__ import annotations

import polars as pl

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


def probe_pairs(pairs: pl.DataFrame, prompt: str = POPE_PROMPT) -> pl.DataFrame:
    """Per image of the training `pairs` (image_id, chosen, rejected): one yes/no pair per object its chosen
    responses name (chosen 'yes.') and per object only its rejected responses name (chosen 'no.').
    `pair_id` is `<image_id>/probe/<object>`; `object` and `answer` say what was asked and which answer won."""
    rows: list[tuple[str, str, str, str, str]] = []
    for (image_id,), group in pairs.group_by("image_id", maintain_order=True):
        present = dict.fromkeys(o for text in group["chosen"] for o in mentioned_objects(text))
        absent = dict.fromkeys(o for text in group["rejected"] for o in mentioned_objects(text) if o not in present)
        rows += [(image_id, o, YES, NO, YES) for o in present]
        rows += [(image_id, o, NO, YES, NO) for o in absent]
    schema = dict.fromkeys(("image_id", "object", "chosen", "rejected", "answer"), pl.String)
    probes = pl.DataFrame(rows, schema=schema, orient="row")
    return probes.with_columns(
        prompt=pl.format(prompt.replace("{object}", "{}"), "object"),
        pair_id=pl.format("{}/" + PROBE + "/{}", "image_id", "object"),
    )
