"""What starts rounds: the schedule and the new-images sensor."""

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from resources import ImageInbox
from si_assets.automation import triggers
from si_assets.automation.triggers import improvement_round_schedule, new_images_sensor
from si_assets.definitions import defs


def write_image(path: Path, seed: int, fmt: str = "PNG", mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").convert(mode).save(path, format=fmt)


def add_run(instance: dg.DagsterInstance, partition: str, status: dg.DagsterRunStatus) -> None:
    instance.add_run(dg.DagsterRun(job_name="improvement_round", status=status, tags={"dagster/partition": partition}))


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    write_image(folder / "a.png", 1)
    write_image(folder / "nested" / "b.jpg", 2, fmt="JPEG")
    return folder


def test_schedule_adds_the_next_round_and_waits_for_the_running_one(inbox: Path) -> None:
    assert improvement_round_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.instance_for_test() as instance:

        def tick(folder: str | None = None):
            # as a context manager, so the instance it opens is closed again and leaves no Dagster state behind
            with dg.build_schedule_context(
                instance=instance,
                resources={"inbox": ImageInbox(folder=folder)},
                repository_def=defs.get_repository_def(),
            ) as context:
                return improvement_round_schedule(context)

        first = tick()
        assert isinstance(first, dg.RunRequest) and first.partition_key == "round-0001" and not first.run_config
        assert instance.get_dynamic_partitions("rounds") == ["round-0001"]
        # Its launch never happened: the same round is offered again rather than skipping a number.
        assert tick().partition_key == "round-0001"
        add_run(instance, "round-0001", dg.DagsterRunStatus.STARTED)
        skipped = tick()
        assert isinstance(skipped, dg.SkipReason) and "round-0001 is still running" in skipped.skip_message
        add_run(instance, "round-0001", dg.DagsterRunStatus.SUCCESS)  # the run finished
        instance.delete_run(instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))[0].run_id)
        second = tick(str(inbox))
        assert second.partition_key == "round-0002"
        assert second.run_config["ops"]["unlabeled_images"]["config"] == {"source": "folder", "folder": str(inbox)}
        assert instance.get_dynamic_partitions("rounds") == ["round-0001", "round-0002"]


def test_sensor_starts_a_round_when_new_images_arrive(inbox: Path) -> None:
    assert new_images_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None, folder: Path | None = inbox, min_new: int = 1):
            with dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={"inbox": ImageInbox(folder=str(folder) if folder else None, min_new_images=min_new)},
                definitions=defs,
            ) as context:
                return new_images_sensor(context)

        assert "no inbox folder configured" in tick(None, folder=None).skip_message
        assert "does not exist" in tick(None, folder=inbox / "missing").skip_message
        first = tick(None)
        assert isinstance(first, dg.SensorResult)
        assert [r.partition_key for r in first.run_requests] == ["round-0001"]
        assert first.run_requests[0].run_config["ops"]["unlabeled_images"]["config"]["folder"] == str(inbox)
        assert first.dynamic_partitions_requests[0].partition_keys == ["round-0001"]
        instance.add_dynamic_partitions("rounds", ["round-0001"])  # what the daemon does with the request
        add_run(instance, "round-0001", dg.DagsterRunStatus.STARTED)

        assert "0 new image(s)" in tick(first.cursor).skip_message
        write_image(inbox / "c.png", 4)
        waiting = tick(first.cursor)
        assert "round-0001 is still running" in waiting.skip_message  # the cursor does not move on
        instance.delete_run(instance.get_runs()[0].run_id)
        add_run(instance, "round-0001", dg.DagsterRunStatus.SUCCESS)
        assert "waiting for 2" in tick(first.cursor, min_new=2).skip_message
        second = tick(first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["round-0002"]
        (inbox / "c.png").write_bytes((inbox / "c.png").read_bytes() + b"\0")  # a changed file counts as new
        assert [r.partition_key for r in tick(second.cursor).run_requests] == ["round-0002"]


def test_sensor_skips_an_inbox_it_cannot_list(inbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(folder: str) -> dict[str, int]:
        raise PermissionError(f"image folder {folder} cannot be listed: Permission denied")

    monkeypatch.setattr(triggers, "image_files", denied)
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(
            instance=instance, resources={"inbox": ImageInbox(folder=str(inbox))}, definitions=defs
        ) as context:
            skipped = new_images_sensor(context)
    assert isinstance(skipped, dg.SkipReason) and "cannot be listed: " in skipped.skip_message
