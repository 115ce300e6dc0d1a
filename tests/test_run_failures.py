"""Why a run stopped, as `make demo` prints it: real rounds through Dagster on a tiny world (a few seconds), stopped
by the blocking `reject_rate` check, by a step's `dg.Failure` and by an exception a step raised; and a run whose
resource fails before any step."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from si_assets.automation.runner import RoundFailed, failure_report, run_bootstrap, run_round, stored_table
from si_assets.collection.validation import NOT_COUNTED
from si_assets.definitions import build_definitions, build_resources
from si_assets.storage import ArtifactStore
from tests.input_corpus import ADMITTED, LIMITS, build_corpus, encoded, noise, restore_permissions

# The smallest world and bootstrap that make a seed model: these tests are about runs failing, not about models.
TINY_BOOTSTRAP = {
    "ops": {
        "world_splits": {
            "config": {"seed": 7, "splits": {"seed_train": 32, "clip_train": 32, "improve": 4, "dev": 4, "test": 4}}
        },
        "bootstrap_seed_model": {
            "config": {
                "vision_pretrain_steps": 0,
                "max_steps": 1,
                "eval_every": 1,
                "batch_size": 4,
                "val_size": 4,
                "min_yes_no_accuracy": 0.0,  # a 1-step seed answers yes/no at chance
            }
        },
        "bootstrap_clip": {"config": {"steps": 1, "batch_size": 4, "retrieval_candidates": 2}},
    }
}


@dataclass
class Tiny:
    defs: dg.Definitions
    instance: dg.DagsterInstance
    store: ArtifactStore


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    root = tmp_path_factory.mktemp("store")
    defs = build_definitions(build_resources(str(root), device="cpu"))
    # Entered, so that the definitions load against this instance, not one an earlier test left as current.
    with dg.DagsterInstance.ephemeral() as instance:
        run_bootstrap(defs, instance, TINY_BOOTSTRAP)
        yield Tiny(defs, instance, ArtifactStore(root))


def images_from(folder: Path, **config: object) -> dict:
    # no `source`: a folder implies it
    return {"ops": {"unlabeled_images": {"config": {"folder": str(folder), **config}}}}


@pytest.mark.slow
def test_a_blocked_reject_rate_names_the_check_and_the_reasons(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = build_corpus(tmp_path / "inbox", tmp_path / "elsewhere", monkeypatch)
    try:
        with pytest.raises(RoundFailed) as stopped:
            run_round(tiny.defs, tiny.instance, "round-0001", images_from(corpus.root, **LIMITS))
    finally:
        restore_permissions(corpus.root)
    outcomes = list(corpus.expected.values())
    failed = [r for r in sorted(set(outcomes) - {ADMITTED}) if r not in NOT_COUNTED]
    seen = sum(map(outcomes.count, failed)) + len(corpus.good)
    head, reason, *_ = str(stopped.value).splitlines()
    assert head.startswith("round-0001: run ") and head.endswith(" failed:")
    assert reason.strip().startswith(
        f"unlabeled_images: blocking check reject_rate failed: {seen - len(corpus.good)} of {seen} inputs could not "
        f"be used ({1 - len(corpus.good) / seen:.1%}, limit 10.0%): "
        + ", ".join(f"{outcomes.count(r)} {r}" for r in failed)
        + "; not counted: "
        + ", ".join(f"{outcomes.count(r)} {r}" for r in sorted(NOT_COUNTED))
        + " (failed="
    )

    # What the step stored before the check stopped the run: every file of the folder once, names not UTF-8 included.
    images = stored_table(tiny.defs, tiny.instance, "unlabeled_images", "round-0001")
    rejects = tiny.store.read_table(tiny.store.head("unlabeled_images_rejects", "round-0001"))
    paths = images["id"].to_list() + rejects["path"].to_list()
    assert len(paths) == len(set(paths))
    assert {**dict(rejects.select("path", "reason").iter_rows()), **dict.fromkeys(images["id"], ADMITTED)} == (
        corpus.expected
    )
    records = tiny.instance.fetch_materializations(dg.AssetKey("unlabeled_images"), limit=1).records
    assert records[0].asset_materialization.metadata["source"].value == str(corpus.root)


@pytest.mark.slow
def test_a_step_failure_and_an_exception_are_named_with_their_message(tiny: Tiny, tmp_path: Path) -> None:
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "page.jpg").write_bytes(b"<html>not found</html>")
    (nothing / "cut.png").write_bytes(encoded(noise((64, 64)))[:200])
    with pytest.raises(RoundFailed) as stopped:
        run_round(tiny.defs, tiny.instance, "round-0002", images_from(nothing))
    assert str(stopped.value).splitlines()[1].strip() == (
        f"unlabeled_images: no usable image in {nothing}; 2 of 2 inputs could not be used (100.0%, limit 10.0%): "
        "1 not_an_image, 1 truncated"
    )

    # the embedded world, with every pair discarded: DPO has nothing to train on
    discard_all = {
        "ops": {
            "collected_responses": {"config": {"n_samples": 2, "n_negatives": 1, "max_new_tokens": 4}},
            "verified_pairs": {"config": {"margin": 1e6}},
        }
    }
    with pytest.raises(RoundFailed) as stopped:
        run_round(tiny.defs, tiny.instance, "round-0003", discard_all)
    lines = str(stopped.value).splitlines()
    assert lines[1].strip() == (
        "trained_model: ValueError: no training pairs: every pair was discarded (lower `margin` or sample more images)"
    )
    assert lines[-1].strip() == "(the whole log: this run in the Dagster UI)" and len(lines) == 3


class Unreachable(dg.ConfigurableResource):
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        raise RuntimeError("cannot reach the store at s3://bucket")


def test_a_run_that_fails_before_any_step_gives_the_runs_error() -> None:
    @dg.asset
    def anything(store: Unreachable) -> int:
        return 1

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([anything], resources={"store": Unreachable()}, instance=instance, raise_on_error=False)
        lines = failure_report("the run", instance, result.run_id).splitlines()
    assert lines[0] == "the run failed:"
    assert (
        lines[1]
        .strip()
        .endswith("An exception was thrown during execution. RuntimeError: cannot reach the store at s3://bucket")
    )
