"""What starts rounds: a schedule (off by default), a sensor on an image folder, and the automation sensor
that re-materializes a round's downstream assets when something upstream in it changes."""

import json
import os
from pathlib import Path

import dagster as dg

from resources import ImageInbox
from si_assets.assets.common import ROUNDS
from si_assets.automation.jobs import improvement_round_job, round_run_config
from si_assets.collection.images import image_files
from si_assets.rounds import latest_round, next_round_key

# Cron in the environment, because Dagster reads a schedule's cron when it loads the code location.
ROUND_CRON_ENV = "SI_ROUND_CRON"
DEFAULT_ROUND_CRON = "0 3 * * 1"  # Mondays 03:00


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def round_in_flight(instance: dg.DagsterInstance) -> str | None:
    """The partition of a round run that is queued or running, if any: rounds build on each other's
    champion, so two never run at once."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=improvement_round_job.name, statuses=IN_FLIGHT),
        limit=1,
    )
    return runs[0].tags.get("dagster/partition", "?") if runs else None


def next_round(instance: dg.DagsterInstance) -> tuple[str, bool]:
    """(the round to launch, whether its partition must be added). A round added earlier whose run never
    started (a failed launch) is launched instead of skipping a number."""
    keys = instance.get_dynamic_partitions(ROUNDS.name)
    last = latest_round(keys)
    if last and not instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": last}), limit=1):
        return last, False
    return next_round_key(keys), True


@dg.schedule(
    job=improvement_round_job,
    cron_schedule=os.environ.get(ROUND_CRON_ENV, DEFAULT_ROUND_CRON),
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=f"Adds the next round partition and launches it (cron from ${ROUND_CRON_ENV}).",
)
def improvement_round_schedule(context: dg.ScheduleEvaluationContext, inbox: ImageInbox):
    busy = round_in_flight(context.instance)
    if busy:
        return dg.SkipReason(f"{busy} is still running; the next round starts from its champion")
    key, new = next_round(context.instance)
    if new:
        # Schedules cannot return partition requests (sensors can): add it here, before the run request.
        context.instance.add_dynamic_partitions(ROUNDS.name, [key])
    return dg.RunRequest(run_key=key, partition_key=key, run_config=round_run_config(inbox.folder))


@dg.sensor(
    job=improvement_round_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Starts a round when new images appear in the inbox folder ($SI_IMAGE_INBOX).",
)
def new_images_sensor(context: dg.SensorEvaluationContext, inbox: ImageInbox):
    if not inbox.folder:
        return dg.SkipReason("no inbox folder configured: set SI_IMAGE_INBOX or the ImageInbox resource")
    if not Path(inbox.folder).is_dir():
        return dg.SkipReason(f"the inbox folder {inbox.folder} does not exist (yet)")
    try:
        files = image_files(inbox.folder)
    except OSError as exc:  # the folder itself cannot be listed: nothing a round could read either
        return dg.SkipReason(f"the inbox folder {inbox.folder} cannot be listed: {exc}")
    # A file is new when its (path, size) was not there at the last round's start.
    listing = sorted(f"{path}\t{size}" for path, size in files.items())
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    new = [entry for entry in listing if entry not in seen]
    if len(new) < inbox.min_new_images:
        return dg.SkipReason(f"{len(new)} new image(s) in {inbox.folder}; waiting for {inbox.min_new_images}")
    busy = round_in_flight(context.instance)
    if busy:
        return dg.SkipReason(f"{len(new)} new image(s), but {busy} is still running")
    key, is_new = next_round(context.instance)
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=key, partition_key=key, run_config=round_run_config(inbox.folder))],
        dynamic_partitions_requests=[ROUNDS.build_add_request([key])] if is_new else [],
        cursor=json.dumps(listing),
    )


AUTOMATION_INTERVAL_ENV = "SI_AUTOMATION_INTERVAL_S"

automation_sensor = dg.AutomationConditionSensorDefinition(
    "round_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get(AUTOMATION_INTERVAL_ENV, "30")),
    description="Re-materializes a round's pairs, model, scores and champion when something upstream in the "
    "same round changes (e.g. verified_pairs with a new margin); never re-samples.",
)
