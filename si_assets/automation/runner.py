"""Running the bootstrap and rounds in-process on an instance: what `make demo`, `make demo-rounds`, the
benchmarks and the tests share. The daemon-driven path (schedule, sensor) launches the same jobs."""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pydantic

from si_assets.assets.common import PROMOTION_GATE, ROUNDS
from si_assets.automation.jobs import bootstrap_job, improvement_round_job
from si_assets.storage import StoredArtifact


@dataclass(frozen=True)
class RoundRun:
    key: str
    gate_passed: bool | None  # None: the round failed before evaluation
    result: dg.ExecuteInProcessResult

    @property
    def refused(self) -> bool:
        return self.gate_passed is False


class RoundFailed(RuntimeError):
    pass


class RunConfigError(ValueError):
    pass


def check_run_config(job: dg.JobDefinition, run_config: Mapping[str, Any], name: str) -> None:
    """Raises `RunConfigError` when `run_config` (called `name` in the message) does not fit `job`: an unknown or
    mistyped field (Dagster's schema) or a value out of its range (the ops' settings classes, which Dagster would
    only build when the step starts, after the steps before it have run)."""
    try:
        resolved = dg.validate_run_config(job, dict(run_config))
    except dg.DagsterInvalidConfigError as bad:
        errors = "\n  ".join(error.message for error in bad.errors)
        raise RunConfigError(f"{name} does not fit the {job.name} job:\n  {errors}") from None
    except dg.DagsterConfigMappingFunctionError as bad:  # a graph-backed asset builds its settings while resolving
        if not isinstance(bad.user_exception, pydantic.ValidationError):
            raise
        raise RunConfigError(_settings_errors(name, bad.user_exception)) from None
    ops = dict(_ops_by_path(job.graph))
    for path, node_config in resolved["ops"].items():
        config_class = _config_class(ops[path]) if path in ops else None
        if config_class is None or node_config.get("config") is None:
            continue
        try:
            config_class(**node_config["config"])
        except pydantic.ValidationError as bad:
            raise RunConfigError(_settings_errors(name, bad, path)) from None


def _settings_errors(name: str, bad: pydantic.ValidationError, path: str | None = None) -> str:
    errors = "\n  ".join(_field_error(error) for error in bad.errors())
    return f"{name}: the config of {path or bad.title}:\n  {errors}"


def _field_error(error: Mapping[str, Any]) -> str:
    location = ".".join(map(str, error["loc"]))
    return f"{location}: {error['msg']}" if location else error["msg"]


def _ops_by_path(graph: dg.GraphDefinition, prefix: str = "") -> Iterator[tuple[str, dg.OpDefinition]]:
    """Every op of `graph` under its path in a resolved run config (`graph_asset.op` inside a graph-backed asset)."""
    for node in graph.nodes:
        if isinstance(node.definition, dg.GraphDefinition):
            yield from _ops_by_path(node.definition, f"{prefix}{node.name}.")
        else:
            yield f"{prefix}{node.name}", node.definition


def _config_class(op: dg.OpDefinition) -> type[pydantic.BaseModel] | None:
    """The Pythonic config class an op's function takes as `config`, if any."""
    function = getattr(op.compute_fn, "decorated_fn", None)
    config_class = typing.get_type_hints(function).get("config") if function is not None else None
    return config_class if isinstance(config_class, type) and issubclass(config_class, pydantic.BaseModel) else None


def run_bootstrap(defs: dg.Definitions, instance: dg.DagsterInstance, run_config: dict | None = None) -> None:
    result = defs.resolve_job_def(bootstrap_job.name).execute_in_process(
        instance=instance, run_config=run_config or {}, raise_on_error=False
    )
    if not result.success:
        raise RoundFailed(failure_report(f"the bootstrap run {result.run_id}", instance, result.run_id))


def run_round(defs: dg.Definitions, instance: dg.DagsterInstance, key: str, run_config: dict | None = None) -> RoundRun:
    """Adds the partition if needed and runs the round. A refused promotion gate fails the run in Dagster
    (the blocking check stops `champion`), but it is an outcome here, not an error; anything else raises."""
    if not instance.has_dynamic_partition(ROUNDS.name, key):
        instance.add_dynamic_partitions(ROUNDS.name, [key])
    result = defs.resolve_job_def(improvement_round_job.name).execute_in_process(
        instance=instance, partition_key=key, run_config=run_config or {}, raise_on_error=False
    )
    gate = [e.passed for e in result.get_asset_check_evaluations() if e.check_name == PROMOTION_GATE]
    run = RoundRun(key, gate[0] if gate else None, result)
    if not result.success and not run.refused:
        raise RoundFailed(failure_report(f"{key}: run {result.run_id}", instance, result.run_id))
    return run


def failure_report(run: str, instance: dg.DagsterInstance, run_id: str) -> str:
    """`run` failed, and why: a line per failed step, from the run's event log (else the run's own error, e.g. a
    resource that did not start)."""
    reasons = why_failed(instance, run_id)
    if not reasons:
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
            error = getattr(entry.dagster_event.event_specific_data, "error", None) if entry.dagster_event else None
            reasons.append(entry.message + (f" {_error_text(error)}" if error else ""))
    lines = [f"{run} failed:", *(r.replace("\n", "\n    ") for r in reasons or ["no error recorded"])]
    return "\n  ".join([*lines, "(the whole log: this run in the Dagster UI)"])


def why_failed(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Why a run stopped, a line per failed step, read from its event log: for a step stopped by a blocking asset
    check, the check's name, description and metadata; otherwise the step's error (a `dg.Failure`'s description,
    else the exception the step raised, not Dagster's wrapper of it)."""
    types = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.ASSET_CHECK_EVALUATION}
    events = [e.dagster_event for e in instance.all_logs(run_id, of_type=types) if e.dagster_event]
    failed_checks: dict[str | None, list[dg.AssetCheckEvaluation]] = {}
    for event in events:
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.asset_check_evaluation_data
            if not check.passed and check.blocking:
                failed_checks.setdefault(event.step_key, []).append(check)
    reasons: list[str] = []
    for event in events:
        if event.event_type != dg.DagsterEventType.STEP_FAILURE:
            continue
        checks = failed_checks.get(event.step_key, [])
        if checks:
            reasons += [
                f"{event.step_key}: blocking check {c.check_name} failed: {c.description or 'no description'}"
                + _metadata_text(c.metadata)
                for c in checks
            ]
        else:
            reasons.append(f"{event.step_key}: {_failure_text(event)}")
    return reasons


def _failure_text(step_failure: dg.DagsterEvent) -> str:
    failure = step_failure.step_failure_data
    user = failure.user_failure_data
    if user is not None and user.description:
        return user.description + _metadata_text(user.metadata)
    return _error_text(failure.error) if failure.error else "failed, with no error recorded"


def _error_text(error: Any) -> str:
    """`Class: message` of what was raised, from Dagster's record of an error (its `cause`: Dagster wraps what a
    step or resource raised in an error of its own)."""
    error = error.cause or error
    head, sep, rest = error.message.strip().partition(": ")
    return f"{error.cls_name}: {rest}" if sep and head.rsplit(".", 1)[-1] == error.cls_name else error.message.strip()


def _metadata_text(metadata: Mapping[str, dg.MetadataValue]) -> str:
    """Short metadata values as ` (key=value, ...)`; previews and long text left out."""
    shown = []
    for key, entry in metadata.items():
        value = entry.value
        if isinstance(value, float):
            shown.append(f"{key}={value:.4g}")
        elif isinstance(value, bool | int) or isinstance(value, str) and len(value) <= 200 and "\n" not in value:
            shown.append(f"{key}={value}")
    return f" ({', '.join(shown)})" if shown else ""


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Runs left "started" by a process of this machine that no longer exists (killed, out of memory) are marked
    failed and their `gpu` pool slots freed, so the next run does not wait for a slot nobody will give back.
    For a local instance (`make demo`); a cluster's daemon monitors its runs itself."""
    released = []
    for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
        pid = starts[-1].dagster_event.pid if starts and starts[-1].dagster_event else None
        if pid is None or _alive(pid):
            continue
        instance.report_run_failed(run, f"its process ({pid}) is gone; found by release_dead_runs")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stored_table(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str, partition: str | None = None):
    """The table the latest materialization of `asset` stored, read back from the artifact store; also
    for steps whose run failed after storing (a refused gate fails `eval_scores` after its scores are out)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records:
        raise LookupError(f"{asset} has no materialization" + (f" for {partition}" if partition else ""))
    meta = records[0].asset_materialization.metadata
    store = defs.resources["store"].get()
    return store.read_table(StoredArtifact("table", meta["path"].value, meta["content_hash"].value))


def refresh_summary(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Materializes `rounds_summary` now (the automation sensor does it when the daemon runs)."""
    job = defs.resolve_implicit_job_def_def_for_assets([dg.AssetKey("rounds_summary")])
    return job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("rounds_summary")])
