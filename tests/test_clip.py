from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from si_assets.bootstrap.clip import TinyClipSpec, build_tiny_clip
from si_assets.verifier.clip import (
    ClipScorer,
    load_clip,
    retrieval_recall_at_1,
    save_clip,
    split_sentences,
)
from si_assets.world import WorldSpec, decode_png, generate_split


@pytest.fixture
def scorer(tmp_path: Path) -> ClipScorer:
    torch.manual_seed(0)
    spec = TinyClipSpec()
    save_clip(build_tiny_clip(spec), spec.open_clip_config(), tmp_path)
    model, preprocess, tokenizer = load_clip(str(tmp_path))
    return ClipScorer(model, preprocess, tokenizer, batch_size=8)


def test_saved_folder_reloads_identically(tmp_path: Path, scorer: ClipScorer) -> None:
    assert (tmp_path / "open_clip_model.safetensors").exists()
    again = ClipScorer(*load_clip(f"local-dir:{tmp_path}"))
    images = [
        decode_png(b)
        for b in generate_split(
            WorldSpec(splits={"seed_train": 1, "clip_train": 1, "improve": 1, "dev": 4, "test": 4}), "dev"
        )["image_png"]
    ]
    assert torch.allclose(scorer.image_embeddings(images), again.image_embeddings(images))


def test_sentence_mean_averages_sentence_scores(scorer: ClipScorer) -> None:
    images = [
        decode_png(b)
        for b in generate_split(
            WorldSpec(splits={"seed_train": 1, "clip_train": 1, "improve": 1, "dev": 2, "test": 2}), "dev"
        )["image_png"]
    ]
    emb = scorer.image_embeddings(images)
    one = scorer.score(emb, ["a red circle.", "a blue star."], mode="sentence_mean")
    assert np.allclose(one, scorer.score(emb, ["a red circle.", "a blue star."], mode="truncate"), atol=1e-6)
    two = scorer.score(emb[:1], ["a red circle. a blue star."], mode="sentence_mean")
    parts = scorer.score(emb[[0, 0]], ["a red circle.", "a blue star."], mode="truncate")
    assert two[0] == pytest.approx(parts.mean(), abs=1e-6)
    with pytest.raises(ValueError, match="score mode"):
        scorer.score(emb, ["a", "b"], mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        scorer.score(emb, ["only one"])


def test_split_sentences() -> None:
    assert split_sentences("A cat. A dog! Why?") == ["A cat.", "A dog!", "Why?"]
    assert split_sentences("no end") == ["no end"]


def test_missing_clip_folder_says_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        load_clip(f"local-dir:{tmp_path}")


def test_retrieval_of_an_untrained_model_is_near_chance(scorer: ClipScorer) -> None:
    df = generate_split(
        WorldSpec(splits={"seed_train": 1, "clip_train": 1, "improve": 1, "dev": 60, "test": 60}), "dev"
    )
    r = retrieval_recall_at_1(
        scorer, [decode_png(b) for b in df["image_png"]], df["caption"].to_list(), n_candidates=20
    )
    assert r < 0.3


def test_verifier_sources_by_name_and_weights_file_by_folder_and_bootstrap(tmp_path: Path) -> None:
    """A published architecture by open_clip name with a local weights file (here random ViT-S-32 weights, as
    `open_clip` saves them), a folder, and the bootstrap CLIP; each scores, and the identity follows the weights."""
    from safetensors.torch import save_file

    from resources import ClipVerifier, ComputeDevice
    from si_assets.verifier.clip import VerifierSource

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32")
    weights = tmp_path / "vit-s-32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    spec = TinyClipSpec()
    folder = save_clip(build_tiny_clip(spec), spec.open_clip_config(), tmp_path / "tiny")
    verifier = ClipVerifier(compute=ComputeDevice(device="cpu"))
    image = Image.new("RGB", (48, 48), (200, 30, 30))
    for source, context in (
        (VerifierSource("ViT-S-32", str(weights)), 77),
        (VerifierSource(str(folder)), spec.context_length),
        (VerifierSource(), spec.context_length),
    ):
        scorer = verifier.scorer(*source.load_args(folder))
        assert scorer.context_length == context
        scores = scorer.score(scorer.image_embeddings([image, image]), ["a red star.", "a blue ring. a green ball."])
        assert scores.shape == (2,) and np.all(np.abs(scores) <= 1.0)
        assert scorer.scored_texts(["a blue ring. a green ball."], "sentence_mean") == ["a blue ring.", "a green ball."]
    loaded = verifier.scorer("ViT-S-32", str(weights)).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())  # the file's weights, not random
    by_file = VerifierSource("ViT-S-32", str(weights)).identity("boot")
    assert by_file == VerifierSource("ViT-S-32", str(weights)).identity("other")
    assert VerifierSource().identity("boot") == "boot"
    assert VerifierSource("ViT-L-14", "openai").identity("boot") == "ViT-L-14:openai"
    save_file({"changed": torch.zeros(1)}, str(weights))
    assert VerifierSource("ViT-S-32", str(weights)).identity("boot") != by_file
    for bad, message in (
        (("no-such-clip",), "neither 'bootstrap', an open_clip model name"),
        (("ViT-S-32", str(tmp_path / "missing.safetensors")), "does not exist"),
        (("bootstrap", "openai"), "takes no `pretrained`"),
    ):
        with pytest.raises(ValueError, match=message):
            VerifierSource(*bad)


def test_object_windows_show_each_boxed_object_alone_with_its_own_caption() -> None:
    """With `object_window`, each image is followed by one window per object box, the rest of the image masked with
    its median colour, captioned with that object alone; without, the images alone; without boxes, a clear error."""
    from si_assets.bootstrap.clip import training_views

    spec = WorldSpec(seed=0, splits={"seed_train": 1, "clip_train": 12, "improve": 1, "dev": 1, "test": 1})
    table = generate_split(spec, "clip_train")
    views = list(training_views(table, 1 / 3))
    assert len(views) == table.height + int(table["objects"].list.len().sum())
    assert [caption for _, caption, _ in training_views(table)] == table["caption"].to_list()
    position = 0
    for row in table.iter_rows(named=True):
        image, caption, mentions = views[position]
        assert caption == row["caption"] and {k for k, _ in mentions} == set(row["objects"])
        pixels = np.asarray(image)
        for offset, (kind, colour, box) in enumerate(zip(row["objects"], row["colours"], row["boxes"]), 1):
            window, text, alone = views[position + offset]
            assert text == f"a {colour} {kind}." and alone == [(kind, colour)]
            masked = np.asarray(window)
            x, y = round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2)  # a 16-px window about the centre
            kept = (slice(max(0, y - 8), y + 8), slice(max(0, x - 8), x + 8))
            assert np.array_equal(masked[kept], pixels[kept])
            outside = np.ones(masked.shape[:2], bool)
            outside[kept] = False
            assert len(np.unique(masked[outside], axis=0)) == 1  # one fill colour
        position += 1 + len(row["objects"])
    with pytest.raises(ValueError, match="needs a `boxes` column"):
        list(training_views(table.drop("boxes"), 1 / 3))


def test_the_bootstrap_clip_trains_on_object_windows_by_configuration(tmp_path: Path) -> None:
    """`object_window` in the bootstrap's config: the asset trains on every `clip_train` image and one window per
    object, says how many windows in its metadata, and saves a CLIP that loads and scores."""
    import dagster as dg

    from si_assets.assets.bootstrap import bootstrap_clip
    from si_assets.assets.world import world_splits
    from si_assets.definitions import build_resources
    from si_assets.storage import ArtifactStore

    splits = {"seed_train": 1, "clip_train": 16, "improve": 1, "dev": 8, "test": 1}
    run_config = {
        "ops": {
            "world_splits": {"config": {"seed": 3, "splits": splits}},
            "bootstrap_clip": {
                "config": {"steps": 2, "batch_size": 8, "retrieval_candidates": 4, "object_window": 1 / 3}
            },
        }
    }
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [world_splits, bootstrap_clip],
            resources=build_resources(str(tmp_path), device="cpu"),
            run_config=run_config,
            instance=instance,
        )
    assert result.success
    (event,) = result.asset_materializations_for_node("bootstrap_clip")
    objects = generate_split(WorldSpec(seed=3, splits=splits), "clip_train")["objects"].list.len().sum()
    assert event.metadata["object_windows"].value == objects > 16
    store = ArtifactStore(tmp_path)
    scorer = ClipScorer(*load_clip(str(store.local_checkpoint(store.head("bootstrap_clip")).path)))
    image = Image.new("RGB", (48, 48), (200, 30, 30))
    assert scorer.score(scorer.image_embeddings([image]), ["a red circle."]).shape == (1,)
