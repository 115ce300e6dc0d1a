"""Killed mid-sampling with SIGKILL, then started again: nothing finished is redone, every row is there once,
and the result is bit-identical to a run that was never interrupted. Earlier versions survive failed writes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from si_assets.storage import ArtifactStore, Checkpoint
from si_assets.storage.chunks import run_in_chunks
from tests import resume_worker

REPO = Path(__file__).resolve().parents[1]


def stored_chunks(store: Path) -> list[Path]:
    return sorted((store / "_chunks" / "collected_responses" / "test").glob("*.parquet"))


@pytest.mark.slow
def test_killed_sampling_resumes_without_redoing_finished_chunks(tmp_path: Path, tiny_llava_dir: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.resume_worker", str(tiny_llava_dir), str(store), "--stall-after", "3"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 300
    while not (store / resume_worker.STALLED).exists():
        assert worker.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "the worker never reached its fourth chunk"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    assert worker.wait(timeout=60) == -signal.SIGKILL
    finished = stored_chunks(store)
    assert len(finished) == 3  # the fourth was decoded but never stored

    resumed, stats = resume_worker.run(tiny_llava_dir, store)
    requests, _ = resume_worker.plan()
    total = -(-requests.height // resume_worker.ROWS_PER_CHUNK)
    assert (stats.chunks, stats.reused, stats.computed) == (total, 3, total - 3)
    assert [p.stat().st_mtime_ns for p in stored_chunks(store)[:3]] == [p.stat().st_mtime_ns for p in finished]
    assert resumed.height == requests.height  # no gaps ...
    assert resumed.select("image_id", "role", "sample").is_unique().all()  # ... and no duplicates
    assert resumed.select(requests.columns).equals(requests)  # in plan order

    uninterrupted, _ = resume_worker.run(tiny_llava_dir, tmp_path / "fresh")
    assert resumed.equals(uninterrupted)  # bit-identical: same config and seeds, same responses on CPU
    assert not list(store.rglob("*.tmp-*"))


def test_chunks_compute_once_and_keep_order(tmp_path: Path) -> None:
    store, calls = ArtifactStore(tmp_path), []
    work = pl.DataFrame({"x": list(range(10))})

    def double(chunk: pl.DataFrame) -> pl.DataFrame:
        calls.append(chunk.height)
        return chunk.with_columns(y=pl.col("x") * 2)

    first, stats = run_in_chunks(store, "step", "k", work, 4, double)
    assert calls == [4, 4, 2] and (stats.chunks, stats.computed, stats.reused) == (3, 3, 0)
    again, stats = run_in_chunks(store, "step", "k", work, 4, double)
    assert calls == [4, 4, 2] and stats.reused == 3 and again.equals(first)
    assert first["y"].to_list() == [2 * x for x in range(10)]
    changed, stats = run_in_chunks(store, "step", "k", work.with_columns(pl.col("x") + (pl.col("x") == 9)), 4, double)
    assert stats.computed == 1 and changed["y"][-1] == 20  # only the chunk whose rows changed
    empty, stats = run_in_chunks(store, "step", "k", work.head(0), 4, double)
    assert empty.height == 0 and stats.chunks == 0
    with pytest.raises(ValueError, match="rows_per_chunk"):
        run_in_chunks(store, "step", "k", work, 0, double)


def test_a_failed_write_leaves_every_earlier_version_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path / "store")
    first = store.put(pl.DataFrame({"a": [1]}), "pairs", "round-0001")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    model = store.put(Checkpoint(folder), "model", "round-0001")
    store.write_pointer("champion", {"version": model.version})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("si_assets.storage.store.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.put(pl.DataFrame({"a": [2]}), "pairs", "round-0001")
    with pytest.raises(OSError, match="disk full"):
        store.write_pointer("champion", {"version": "something-else"})
    (folder / "model.safetensors").write_bytes(b"new weights")
    with pytest.raises(OSError, match="disk full"):
        store.put(Checkpoint(folder), "model", "round-0001")
    monkeypatch.undo()

    assert store.head("pairs", "round-0001") == first and store.read_table(first)["a"].to_list() == [1]
    assert store.versions("pairs", "round-0001") == [first.version]  # the .tmp leftovers are not versions
    assert store.versions("model", "round-0001") == [model.version]
    assert (store.local_checkpoint(model).path / "model.safetensors").read_bytes() == b"weights"
    assert store.read_pointer("champion") == {"version": model.version}


def test_a_run_whose_process_died_gives_back_its_gpu_slot(tmp_path: Path) -> None:
    """A run killed while holding the `gpu` pool's only slot would block every later run; the demo releases it."""
    from si_assets.automation.runner import release_dead_runs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        instance.event_log_storage.set_concurrency_slots("gpu", 1)
        dead, alive = (
            instance.create_run_for_job(dg.GraphDefinition(name=f"job_{n}").to_job(), run_id=None) for n in "ab"
        )
        for run, pid in ((dead, gone.pid), (alive, os.getpid())):
            instance.report_dagster_event(
                dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, run.job_name, pid=pid), run.run_id
            )
        instance.event_log_storage.claim_concurrency_slot("gpu", dead.run_id, "trained_model")
        assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots

        assert release_dead_runs(instance) == [dead.run_id]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED  # ours: still alive
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots


def test_a_merge_decodes_the_chunks_no_shard_finished(tmp_path: Path, tiny_llava_dir: Path) -> None:
    """Shard 0 of 2 ran, shard 1 never did (killed, or its step not re-run): the merge decodes shard 1's chunks
    itself, and the table equals one sampled without shards in a fresh store."""
    from resources import ArtifactStoreResource, ComputeDevice, VisionLanguageModels
    from si_assets.assets.sampling import SamplingConfig, merge_shards, sample_shard
    from si_assets.collection.images import world_pool
    from si_assets.world import WorldSpec, generate_split

    world = generate_split(
        WorldSpec(seed=7, splits={"seed_train": 2, "clip_train": 2, "improve": 6, "dev": 2, "test": 2}), "improve"
    )
    images = world_pool(world).images
    config = SamplingConfig(n_samples=2, n_negatives=1, max_new_tokens=6, chunk_size=4, shards=2)
    context = dg.build_op_context(partition_key="round-0001")
    models = VisionLanguageModels(compute=ComputeDevice(device="cpu"))
    seed = Checkpoint(tiny_llava_dir)

    def merged(store: ArtifactStoreResource, shards: list[dict]) -> pl.DataFrame:
        outputs = list(merge_shards(context, config, models, store, seed, images, shards))
        assert [o.output_name for o in outputs] == ["sampled_responses", "hallucinated_negatives"]
        return pl.concat([o.value for o in outputs])

    store = ArtifactStoreResource(root=str(tmp_path / "sharded"))
    first = sample_shard(context, config, models, store, seed, images, 0)
    assert first["computed"] == 3 and first["rows"] == 10  # chunks 0, 2, 4 of 5 (18 requests, 4 per chunk)
    sharded = merged(store, [first])
    unsharded = merged(ArtifactStoreResource(root=str(tmp_path / "fresh")), [])
    assert sharded.height == 6 * 3 and sharded.equals(unsharded)
