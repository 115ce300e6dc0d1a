"""The asset graph on a small world through Dagster: bootstrap, rounds as partitions, the promotion gate,
the champion pointer, automation after a margin change, the rounds summary."""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from resources import ArtifactStoreResource, ComputeDevice, VisionLanguageModels
from si_assets.assets.collection import SeedConfig, seed_checkpoint
from si_assets.automation.runner import refresh_summary, run_bootstrap, run_round
from si_assets.collection.images import decode_images
from si_assets.definitions import build_definitions, build_resources, defs
from si_assets.optimization.dpo import optimizer_steps
from si_assets.organization.balance import OMISSION, name_push, omission_pairs
from si_assets.organization.segments import segment_spans
from si_assets.organization.support import grounded_consensus, region_support_of
from si_assets.organization.verification import clip_score_fn, training_pairs
from si_assets.rounds import ChampionRegistry, round_seed
from si_assets.storage import ArtifactStore, Checkpoint
from si_assets.verifier.clip import ClipScorer, load_clip
from tests.conftest import SMALL_SPLITS

BOOTSTRAP_CONFIG = {
    "ops": {
        "world_splits": {"config": {"seed": 7, "splits": SMALL_SPLITS}},
        "bootstrap_seed_model": {
            "config": {
                "vision_pretrain_steps": 10,
                "max_steps": 20,
                "eval_every": 10,
                "batch_size": 8,
                "val_size": 16,
                "min_yes_no_accuracy": 0.0,  # a 20-step seed answers yes/no at chance; measured, not required
            }
        },
        "bootstrap_clip": {"config": {"steps": 10, "batch_size": 16, "retrieval_candidates": 10}},
    }
}
TRAINING = {"epochs": 1, "batch_size": 8}
# the tiny models: force each outcome
# The small test world's models are too weak for the real gate; this one passes anything.
PASS_GATE = {
    "min_precision_gain": -1.0,
    "recall_tolerance": 1.0,
    "pope_tolerance": 1.0,
    "min_pope_accuracy": 0.0,
    "min_yes_ratio": 0.0,
    "max_yes_ratio": 1.0,
}
REFUSE_GATE = {"min_precision_gain": 1.0}


def round_config(gate: dict, **trained: object) -> dict:
    return {
        "ops": {
            "collected_responses": {"config": {"n_samples": 3, "n_negatives": 1, "max_new_tokens": 12}},
            "trained_model": {"config": {**TRAINING, **trained}},
            "eval_scores": {"config": {"pope_per_image": 1, "max_new_tokens": 12, **gate}},
        }
    }


def latest(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def small_round(defs: dg.Definitions):
    """Bootstrap the small world and run round-0001 with the gate open; (the round, trained_model's metadata)."""
    instance = dg.DagsterInstance.ephemeral()
    run_bootstrap(defs, instance, BOOTSTRAP_CONFIG)
    run = run_round(defs, instance, "round-0001", round_config(PASS_GATE))
    assert run.result.success
    return run, latest(instance, "trained_model", "round-0001")


def count(instance: dg.DagsterInstance, asset: str, partition: str) -> int:
    filt = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition])
    return len(instance.fetch_materializations(filt, limit=100).records)


@dataclass
class World:
    instance: dg.DagsterInstance
    defs: dg.Definitions
    store: ArtifactStore


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Bootstrapped once, shared by the tests below, which run in file order and build on each other."""
    root = tmp_path_factory.mktemp("store")
    instance = dg.DagsterInstance.ephemeral()
    local_defs = build_definitions(build_resources(str(root), device="cpu"))
    run_bootstrap(local_defs, instance, BOOTSTRAP_CONFIG)
    return World(instance, local_defs, ArtifactStore(root))


def test_definitions_load_with_stage_groups() -> None:
    groups = {spec.key.to_user_string(): spec.group_name for spec in defs.resolve_all_asset_specs()}
    assert groups["world_dev"] == groups["world_test"] == "world"
    assert groups["bootstrap_seed_model"] == "bootstrap"
    assert groups["seed_checkpoint"] == groups["unlabeled_images"] == "collection"
    assert groups["sampled_responses"] == groups["hallucinated_negatives"] == "collection"
    assert groups["verified_pairs"] == "organization"
    assert groups["trained_model"] == "optimization"
    assert groups["eval_scores"] == groups["champion"] == groups["rounds_summary"] == "evaluation"
    partitioned = {s.key.to_user_string() for s in defs.resolve_all_asset_specs() if s.partitions_def}
    assert partitioned == {
        "unlabeled_images",
        "seed_checkpoint",
        "sampled_responses",
        "hallucinated_negatives",
        "verified_pairs",
        "trained_model",
        "eval_scores",
        "champion",
    }


@pytest.mark.slow
def test_round_promotes_and_repeats_exactly(world: World) -> None:
    instance, store = world.instance, world.store
    first = run_round(world.defs, instance, "round-0001", round_config(PASS_GATE))
    assert first.result.success and first.gate_passed is True

    table: pl.DataFrame = first.result.output_for_node("eval_scores")
    assert {"split", "metric", "base", "seed", "trained", "delta", "delta_low", "delta_high"} <= set(table.columns)
    dev = table.filter(pl.col("split") == "dev")
    assert dev["base"].to_list() == dev["seed"].to_list()  # round 1 starts from the base model
    assert set(table["split"]) == {"dev", "test"}
    scores = latest(instance, "eval_scores", "round-0001")
    for split in ("dev", "test"):
        for metric in ("precision", "recall", "f1", "chair_s", "pope_f1"):
            seed_value, trained_value = scores[f"{split}/seed/{metric}"], scores[f"{split}/trained/{metric}"]
            assert 0.0 <= seed_value <= 1.0 and 0.0 <= trained_value <= 1.0
            assert scores[f"{split}/delta/{metric}"] == pytest.approx(trained_value - seed_value)
            low, high = scores[f"{split}/delta/{metric}_low"], scores[f"{split}/delta/{metric}_high"]
            assert low <= trained_value - seed_value <= high
    assert "| split | metric | base | seed | trained | delta |" in scores["eval_table"]
    assert scores["plot"].startswith("![test split](data:image/png;base64,")
    assert scores["images/dev"] == SMALL_SPLITS["dev"] and scores["images/test"] == SMALL_SPLITS["test"]

    n_images = SMALL_SPLITS["improve"]
    positives = first.result.output_for_node("collected_responses", "sampled_responses")
    negatives = first.result.output_for_node("collected_responses", "hallucinated_negatives")
    assert positives.height == 3 * n_images and negatives.height == n_images
    seed = latest(instance, "seed_checkpoint", "round-0001")
    assert seed["source"] == "base: bootstrap_seed_model"
    assert seed["input/seed"] == latest(instance, "bootstrap_seed_model")["path"].rsplit("/", 1)[-1]
    assert set(positives["model_version"]) == {seed["input/seed"]}
    assert latest(instance, "sampled_responses", "round-0001")["sampling_seed"] == round_seed(0, "round-0001")

    # Lineage: each asset names the versions it consumed; the eval links seed -> pairs -> trained model.
    pairs_meta = latest(instance, "verified_pairs", "round-0001")
    trained_meta = latest(instance, "trained_model", "round-0001")
    pairs_version = latest(instance, "verified_pairs", "round-0001")["path"].rsplit("/", 1)[-1]
    assert trained_meta["input/verified_pairs"] == pairs_version
    assert trained_meta["input/seed_checkpoint"] == seed["input/seed"]
    assert pairs_version in scores["lineage"] and trained_meta["path"].rsplit("/", 1)[-1] in scores["lineage"]
    assert sum(pairs_meta[d] for d in ("kept", "reversed", "discarded")) == n_images
    # the caption pairs that train, and their yes/no probes (one per object they name)
    assert pairs_meta["probe_pairs"] == sum(pairs_meta["probe_answers"].values())
    assert trained_meta["training_pairs"] == n_images - pairs_meta["discarded"] + pairs_meta["probe_pairs"]
    assert trained_meta["reference_pairs_computed"] == trained_meta["training_pairs"]
    assert trained_meta["reference_pairs_reused"] == 0

    # The gate passed, so `champion` wrote the pointer: the trained model, as stored.
    champion = ChampionRegistry(store).current()
    assert champion is not None and champion.round == "round-0001"
    assert champion.version == trained_meta["path"].rsplit("/", 1)[-1]
    assert champion.base_metrics["precision"] == pytest.approx(scores["dev/seed/precision"])  # the gate's split
    assert champion.metrics["precision"] == pytest.approx(scores["dev/trained/precision"])
    assert latest(instance, "champion", "round-0001")["promoted"] is True

    # Re-running a round repeats it: same seed (not the champion it produced), bit-identical data.
    again = run_round(world.defs, instance, "round-0001", round_config(PASS_GATE))
    assert again.result.success
    for key in ("seed_checkpoint", "sampled_responses", "hallucinated_negatives", "verified_pairs", "eval_scores"):
        filt = dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=["round-0001"])
        records = instance.fetch_materializations(filt, limit=2).records
        assert len({r.asset_materialization.tags["dagster/data_version"] for r in records}) == 1, key
    assert latest(instance, "trained_model", "round-0001")["reference_pairs_computed"] == 0
    sampled = latest(instance, "sampled_responses", "round-0001")  # finished chunks are found, not decoded again
    assert sampled["chunks"] >= 1 and sampled["chunks_reused"] == sampled["chunks"]
    assert latest(instance, "eval_scores", "round-0001")["seed_scores_reused"] is True
    assert latest(instance, "champion", "round-0001")["reason"] == "already the champion"


@pytest.mark.slow
def test_refused_gate_leaves_the_champion_and_seeds_the_next_round_from_it(world: World) -> None:
    before = ChampionRegistry(world.store).current()
    assert before is not None and before.round == "round-0001"
    second = run_round(world.defs, world.instance, "round-0002", round_config(REFUSE_GATE))
    assert second.refused and not second.result.success
    assert ChampionRegistry(world.store).current() == before  # nothing promoted, pointer untouched
    assert count(world.instance, "champion", "round-0002") == 0  # the blocking check stopped it
    assert count(world.instance, "eval_scores", "round-0002") == 1  # the scores are still there to read
    seed = latest(world.instance, "seed_checkpoint", "round-0002")
    assert seed["source"] == "champion of round-0001" and seed["input/seed"] == before.version
    assert before.eval_data == latest(world.instance, "eval_scores", "round-0001")["input/world_dev"]
    # The base model's recall stays the reference every later gate is held to.
    scores = latest(world.instance, "eval_scores", "round-0002")
    assert scores["base/recall"] == pytest.approx(before.base_metrics["recall"])
    assert scores["gate_passed"] is False and "refused" in scores["gate"]

    # Evaluating on other data than the champion's would compare across data sets: a clear error instead.
    eval_key = dg.AssetKey("eval_scores")
    job = world.defs.resolve_implicit_job_def_def_for_assets([eval_key])
    other = {
        "ops": {
            "eval_scores": {"config": {**round_config(REFUSE_GATE)["ops"]["eval_scores"]["config"], "max_images": 10}}
        }
    }
    changed = job.execute_in_process(
        instance=world.instance,
        partition_key="round-0002",
        asset_selection=[eval_key],
        run_config=other,
        raise_on_error=False,
    )
    assert not changed.success
    failure = [e for e in changed.all_events if e.is_step_failure][0]
    assert "would compare across data sets" in str(failure.event_specific_data.error)

    summary: pl.DataFrame = refresh_summary(world.defs, world.instance).output_for_node("rounds_summary")
    assert summary["round"].to_list() == ["round-0001", "round-0002"]
    assert summary["promoted"].to_list() == [True, False]
    assert summary["gate_passed"].to_list() == [True, False]
    meta = latest(world.instance, "rounds_summary")
    assert meta["plot"].startswith("![metrics across rounds](data:image/png;base64,")
    assert meta["champion"].endswith("(round-0001)")


@pytest.mark.slow
def test_a_failed_materialization_keeps_earlier_versions_and_the_champion(world: World) -> None:
    instance, key = world.instance, "round-0001"
    champion = ChampionRegistry(world.store).current()
    before = latest(instance, "trained_model", key)
    trained = dg.AssetKey("trained_model")
    job = world.defs.resolve_implicit_job_def_def_for_assets([trained])
    broken = {"ops": {"trained_model": {"config": {**TRAINING, "lora_targets": "no_such_module"}}}}
    failed = job.execute_in_process(
        instance=instance, partition_key=key, asset_selection=[trained], run_config=broken, raise_on_error=False
    )
    assert not failed.success
    assert latest(instance, "trained_model", key) == before  # no new materialization recorded
    assert ChampionRegistry(world.store).current() == champion
    stored = world.store.head("trained_model", key)
    assert stored.uri == before["path"] and world.store.local_checkpoint(stored).path.joinpath("config.json").is_file()
    assert not list(Path(world.store.root, "trained_model", key).glob(".tmp-*"))  # nothing half-published


@pytest.mark.slow
def test_margin_change_retrains_and_reevaluates_by_automation_without_resampling(world: World) -> None:
    instance, key = world.instance, "round-0001"
    sampled_before = count(instance, "sampled_responses", key)
    trained_before = latest(instance, "trained_model", key)["path"].rsplit("/", 1)[-1]
    baseline = dg.evaluate_automation_conditions(defs=world.defs, instance=instance)

    margin = {"ops": {"verified_pairs": {"config": {"margin": 0.01}}}}
    job = world.defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey("verified_pairs")])
    assert job.execute_in_process(
        instance=instance, partition_key=key, run_config=margin, asset_selection=[dg.AssetKey("verified_pairs")]
    ).success

    tick = dg.evaluate_automation_conditions(defs=world.defs, instance=instance, cursor=baseline.cursor)
    requested = {k.to_user_string(): tick.get_requested_partitions(k) for k in world.defs.resolve_all_asset_keys()}
    requested = {k: v for k, v in requested.items() if v}
    assert requested == {
        "trained_model": {key},
        "eval_scores": {key},
        "champion": {key},
        "rounds_summary": {None},
    }

    # Run what automation asked for, the way its sensor would: the round's part in one run, then the summary.
    round_keys = [dg.AssetKey(k) for k in ("trained_model", "eval_scores", "champion")]
    job = world.defs.resolve_implicit_job_def_def_for_assets(round_keys)
    ops = round_config(PASS_GATE)["ops"]
    config = {"ops": {name: ops[name] for name in ("trained_model", "eval_scores")}}
    # the tiny world's CLIP scores pairs close together: a 0.01 margin drops a third of them, more than the default
    # warm_start_max_change lets continue
    config["ops"]["trained_model"] = {"config": {**TRAINING, "warm_start_max_change": 1.0}}
    assert job.execute_in_process(
        instance=instance, partition_key=key, asset_selection=round_keys, run_config=config
    ).success
    pairs_version = latest(instance, "verified_pairs", key)["path"].rsplit("/", 1)[-1]
    assert latest(instance, "verified_pairs", key)["margin"] == 0.01
    assert latest(instance, "trained_model", key)["input/verified_pairs"] == pairs_version
    assert (
        latest(instance, "eval_scores", key)["input/trained_model"]
        == latest(instance, "trained_model", key)["path"].rsplit("/", 1)[-1]
    )
    assert count(instance, "sampled_responses", key) == sampled_before  # nothing upstream ran again
    retrained = latest(instance, "trained_model", key)  # pairs the new margin kept were computed before
    assert retrained["reference_pairs_computed"] == 0
    assert retrained["reference_pairs_reused"] == retrained["training_pairs"]
    # few pairs changed: the round's adapter went on from where it was, on the changed pairs and as many replayed
    changed = retrained["warm_start_pairs"]
    assert "continuing the earlier adapter" in retrained["warm_start"], retrained["warm_start"]
    assert retrained["warm_start"].endswith("at learning rate 0.0001")  # a tenth of the default 1e-3
    assert retrained["warm_started_from"] == trained_before
    assert f"continuing {trained_before}" in latest(instance, "eval_scores", key)["lineage"]
    unchanged = retrained["training_pairs"] - changed["added"]
    assert changed["replayed"] == min(max(changed["added"], changed["removed"]), unchanged) > 0
    batch, epochs = TRAINING["batch_size"], TRAINING["epochs"]
    assert retrained["steps"] == optimizer_steps(changed["added"] + changed["replayed"], batch, epochs)
    assert changed["added"] + changed["replayed"] < retrained["training_pairs"]

    after = dg.evaluate_automation_conditions(defs=world.defs, instance=instance, cursor=tick.cursor)
    assert after.get_requested_partitions(dg.AssetKey("trained_model")) == set()  # settled


@pytest.mark.slow
def test_self_sft_baseline_is_configuration(world: World) -> None:
    key, trained = "round-0001", dg.AssetKey("trained_model")
    job = world.defs.resolve_implicit_job_def_def_for_assets([trained])
    config = {"ops": {"trained_model": {"config": {**TRAINING, "optimization": "self_sft"}}}}
    assert job.execute_in_process(
        instance=world.instance, partition_key=key, asset_selection=[trained], run_config=config
    ).success
    meta = latest(world.instance, "trained_model", key)
    assert meta["optimization"] == "self_sft" and meta["training_pairs"] == SMALL_SPLITS["improve"]


@pytest.mark.slow
def test_composed_chosen_and_swapped_negatives_are_configuration(world: World) -> None:
    """`chosen: composed` + `negatives: swapped` through the asset: composed captions (sample number 3, one past
    the round's 3 samples) are chosen where CLIP scores them best, and each swapped rejected response is its
    chosen one with one segment changed; the metadata counts the rejected responses by source."""
    key, pairs_key = "round-0001", dg.AssetKey("verified_pairs")
    job = world.defs.resolve_implicit_job_def_def_for_assets([pairs_key])
    composing = {"chosen": "composed", "compose_from_best": True}
    config = {"ops": {"verified_pairs": {"config": {"negatives": "swapped", **composing}}}}
    result = job.execute_in_process(
        instance=world.instance, partition_key=key, asset_selection=[pairs_key], run_config=config
    )
    assert result.success
    pairs = result.output_for_node("verified_pairs")
    composed = pairs.filter(pl.col("sample_positive") == 3)
    assert composed.height > 0 and composed["h_positive"].is_null().all()
    swapped = pairs.filter(pl.col("rejected_source") == "swapped")
    sources = latest(world.instance, "verified_pairs", key)["rejected_sources"]
    assert sources["swapped"] == swapped.height > 0 and sum(sources.values()) == pairs.height
    for chosen, rejected in swapped.select("chosen", "rejected").iter_rows():
        own, edit = segment_spans(chosen), segment_spans(rejected)
        assert len(own) == len(edit) and rejected != chosen
        assert sum(chosen[a:b] != rejected[c:d] for (a, b), (c, d) in zip(own, edit)) == 1
    assert (swapped["score_rejected"] < swapped["score_chosen"]).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["dg", "check", "defs"], ["dagster", "definitions", "validate", "-w", "workspace.yaml"]],
    ids=["dg-check-defs", "definitions-validate"],
)
def test_code_location_validates(command: list[str], tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).parent / command[0]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "SI_STORE": str(tmp_path / "store")}
    done = subprocess.run([str(exe), *command[1:]], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_seed_checkpoint_takes_a_configured_base_until_a_round_promotes(tmp_path: Path, tiny_llava_dir: Path) -> None:
    base, bootstrap = tmp_path / "base", tiny_llava_dir
    shutil.copytree(tiny_llava_dir, base)
    store = ArtifactStoreResource(root=str(tmp_path / "store"))
    models = VisionLanguageModels(compute=ComputeDevice(device="cpu"))
    context = dg.build_asset_context(partition_key="round-0001")
    out = seed_checkpoint(context, SeedConfig(base=str(base)), models, store, Checkpoint(bootstrap))
    assert out.value.path == base and out.metadata["source"].value == f"base: {base}"
    out = seed_checkpoint(context, SeedConfig(), models, store, Checkpoint(bootstrap))
    assert out.value.path == bootstrap and out.metadata["source"].value == "base: bootstrap_seed_model"
    with pytest.raises(dg.Failure, match="'org/some-hub-model' is not in the Hugging Face cache"):
        seed_checkpoint(context, SeedConfig(base="org/some-hub-model"), models, store, Checkpoint(bootstrap))


def verified_pairs_with(world: World, key: str, config: dict) -> pl.DataFrame:
    """`verified_pairs` of round `key` materialized again with the verification `config`."""
    pairs_key = dg.AssetKey("verified_pairs")
    result = world.defs.resolve_implicit_job_def_def_for_assets([pairs_key]).execute_in_process(
        instance=world.instance,
        partition_key=key,
        asset_selection=[pairs_key],
        run_config={"ops": {"verified_pairs": {"config": config}}},
    )
    assert result.success
    return result.output_for_node("verified_pairs")


@pytest.mark.slow
def test_region_support_cuts_chosen_captions_by_configuration(world: World) -> None:
    """`min_region_support` through the asset. `cut`: each chosen caption is the one the rule picks without it, less
    the segments it counts as dropped, against the same rejected side. `add`: the caption pairs stay as they were,
    and each cut caption is chosen once more against its whole caption. The metadata counts the cut captions."""
    key = "round-0001"

    def pairs(mode: str, threshold: float) -> pl.DataFrame:
        return verified_pairs_with(world, key, {"min_region_support": threshold, "region_pairs": mode})

    whole = pairs("cut", 0.0).filter(pl.col("task") == "caption")
    # the median support of the chosen segments, as the edit computes it: about half of them fall under it
    clip = world.store.local_checkpoint(world.store.head("bootstrap_clip")).path
    images = decode_images(world.store.read_table(world.store.head("unlabeled_images", key)))
    texts: dict[str, list[str]] = {}
    for image_id, chosen, rejected in whole.select("image_id", "chosen", "rejected").iter_rows():
        texts.setdefault(image_id, []).extend([chosen, rejected])
    support_of = region_support_of(ClipScorer(*load_clip(str(clip))), images, texts, 1 / 3)
    segments = [(i, c[a:b]) for i, c in whole.select("image_id", "chosen").iter_rows() for a, b in segment_spans(c)]
    median = float(np.median([support_of(i, segment) for i, segment in segments]))
    cut, added = pairs("cut", median).filter(pl.col("task") == "caption"), pairs("add", median)
    region = added.filter(pl.col("task") == "region")
    assert latest(world.instance, "verified_pairs", key)["region_support_cut"] == region.height > 0
    assert "unsupported_dropped" not in whole.columns
    assert whole["pair_id"].to_list() == cut["pair_id"].to_list()
    assert whole["rejected"].to_list() == cut["rejected"].to_list()
    assert cut["unsupported_dropped"].sum() > 0
    for before, after, dropped in zip(whole["chosen"], cut["chosen"], cut["unsupported_dropped"]):
        kept = [after[a:b] for a, b in segment_spans(after)]
        assert set(kept) <= {before[a:b] for a, b in segment_spans(before)}
        assert len(kept) == len(segment_spans(before)) - dropped
    assert added.filter(pl.col("task") == "caption").select(whole.columns).equals(whole)
    region = region.sort("pair_id")
    edited = cut.filter(pl.col("unsupported_dropped") > 0).sort("pair_id")
    assert region["pair_id"].to_list() == [f"{p}/region" for p in edited["pair_id"]]
    assert region["chosen"].to_list() == edited["chosen"].to_list()
    assert (
        region["rejected"].to_list()
        == whole.filter(pl.col("pair_id").is_in(edited["pair_id"])).sort("pair_id")["chosen"].to_list()
    )


@pytest.mark.slow
def test_grounded_consensus_rewrites_chosen_captions_from_the_samples(world: World) -> None:
    """`region_caption: consensus` through the asset: each caption pair's chosen side is its image's consensus of
    the sampled responses, against the same rejected side and pair ids. At bars every object clears, the consensus is
    each object the samples name, in its most used phrase, which the test recomputes from the stored samples."""
    key, share = "round-0001", 0.001
    consensus = {
        "min_region_support": 1e-6,
        "region_caption": "consensus",
        "min_sample_share": share,
        "region_pairs": "cut",
    }
    captions = pl.col("task") == "caption"
    whole = verified_pairs_with(world, key, {}).filter(captions)
    rewritten = verified_pairs_with(world, key, consensus).filter(captions)
    samples = world.store.read_table(world.store.head("sampled_responses", key))
    expected = grounded_consensus(samples, lambda image_id, segment: 1.0, 0.0, share)
    assert expected and whole["pair_id"].to_list() == rewritten["pair_id"].to_list()
    assert whole["rejected"].to_list() == rewritten["rejected"].to_list()
    before = whole.select("image_id", "chosen").iter_rows()
    assert rewritten["chosen"].to_list() == [expected.get(image_id, chosen) for image_id, chosen in before]


@pytest.mark.slow
def test_omission_pairs_follow_the_caption_pairs_by_configuration(world: World) -> None:
    """`omission_share` through the asset: the caption pairs and probes stay as they were, the omission pairs are
    the ones `omission_pairs` draws from the caption pairs with the round's CLIP and seed, and the metadata shows
    the caption pairs' net push per object. (The small world's seed names few objects per caption: which omissions
    a real round draws, and how they offset the push, is unit-tested in test_balance.py.)"""
    key = "round-0001"
    plain = verified_pairs_with(world, key, {})
    balanced = verified_pairs_with(world, key, {"omission_share": 1.0})
    assert balanced.filter(pl.col("task") != OMISSION).equals(plain)
    captions = training_pairs(plain).filter(pl.col("task") == "caption")
    clip = world.store.local_checkpoint(world.store.head("bootstrap_clip")).path
    images = decode_images(world.store.read_table(world.store.head("unlabeled_images", key)))
    score = clip_score_fn(ClipScorer(*load_clip(str(clip))), images, list(images), "sentence_mean")
    expected = omission_pairs(captions, score, 1.0, round_seed(0, key))
    assert balanced.filter(pl.col("task") == OMISSION).select(expected.columns).equals(expected)
    push = name_push(captions)
    assert min(push.values()) < 0  # the negatives name some words more often than the chosen captions
    assert latest(world.instance, "verified_pairs", key)["name_push"] == dict(sorted(push.items()))
