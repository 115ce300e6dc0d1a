"""A readable snapshot of the code location's Definitions, kept in `tests/snapshots/definitions.json`.

The snapshot records the structure Dagster sees (asset graph, checks, jobs, schedules, sensors, resource keys), not
what the steps compute, so a refactor that moves code around must leave it unchanged, and a change to the graph
shows up as a small diff to review. Nothing is materialized: building the snapshot only resolves the Definitions.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from si_assets.definitions import defs

ROOT = Path(__file__).parents[1]
SNAPSHOT = ROOT / "tests" / "snapshots" / "definitions.json"
UPDATE_ENV = "SI_UPDATE_SNAPSHOT"
UPDATE_HINT = (
    f"run `{UPDATE_ENV}=1 make test` (or `{UPDATE_ENV}=1 .venv/bin/python -m pytest "
    "tests/test_definitions_snapshot.py`) if the change is intended"
)
# The schedule's cron is read from the environment when the code location loads; the snapshot holds the default.
CRON_ENV = "SI_ROUND_CRON"


def key_str(key: dg.AssetKey) -> str:
    return key.to_user_string()


def partitions_str(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    """`dynamic: rounds` for dynamic partitions, else the class and Dagster's own description; None if none."""
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return f"dynamic: {partitions_def.name}"
    return f"{type(partitions_def).__name__}: {partitions_def}"


def condition_tree(condition: dg.AutomationCondition | None, depth: int = 0) -> list[str] | None:
    """An automation condition as one line per node, indented by depth: the node's name, then `[label]` if it has
    one. A label alone is not enough: `eager().ignore(...)` keeps the label `eager`, and the ignored selection only
    shows in the names of the nodes below it. Names hold no memory addresses, so the lines are stable."""
    if condition is None:
        return None
    label = condition.get_label()
    lines = ["  " * depth + condition.name + (f" [{label}]" if label else "")]
    for child in condition.children:
        lines.extend(condition_tree(child, depth + 1) or [])
    return lines


def ops_of(node: dg.NodeDefinition) -> dict[str, dict[str, Any]]:
    """The ops that compute an asset (the inner ops of a graph-backed one), with their pool and tags."""
    ops = node.iterate_op_defs() if isinstance(node, dg.GraphDefinition) else [node]
    return {op.name: {"pool": op.pool, "tags": dict(sorted(op.tags.items()))} for op in ops}


def definitions_snapshot(definitions: dg.Definitions) -> dict[str, Any]:
    """What the snapshot holds: per asset its group, upstream assets, partitions, code version, automation
    condition, ops (pools, tags), the node computing it and the other assets that node outputs, and its checks;
    the jobs with their resolved selection, the schedules, the sensors and the resource keys (not their values,
    which depend on the environment)."""
    graph = definitions.resolve_asset_graph()
    checks_by_asset: dict[str, dict[str, Any]] = {}
    for check_key in graph.asset_check_keys:
        check = graph.get(check_key)
        checks_by_asset.setdefault(key_str(check_key.asset_key), {})[check_key.name] = {
            "blocking": check.blocking,
            "partitions": partitions_str(check.partitions_def),
            "automation_condition": condition_tree(check.automation_condition),
        }

    assets: dict[str, Any] = {}
    for node in graph.asset_nodes:
        assets_def = node.assets_def
        compute = assets_def.node_def
        assets[key_str(node.key)] = {
            "group": node.group_name,
            "deps": sorted(key_str(k) for k in node.parent_keys),
            "partitions": partitions_str(node.partitions_def),
            "code_version": node.code_version,
            "automation_condition": condition_tree(node.automation_condition),
            "tags": dict(sorted(node.tags.items())),
            "pools": sorted(node.pools),
            "io_manager_key": assets_def.get_io_manager_key_for_asset_key(node.key),
            "node": f"{'graph' if isinstance(compute, dg.GraphDefinition) else 'op'} {compute.name}",
            "node_outputs": sorted(key_str(k) for k in assets_def.keys),
            "ops": ops_of(compute),
            "checks": checks_by_asset.get(key_str(node.key), {}),
        }

    jobs: dict[str, Any] = {}
    for job in definitions.resolve_all_job_defs():
        if job.name.startswith("__ASSET_JOB"):  # Dagster's implicit job of all assets
            continue
        selected = job.asset_layer.selected_asset_keys
        jobs[job.name] = {
            "assets": sorted(key_str(k) for k in selected),
            "checks": sorted(
                check_key.to_user_string()
                for check_key in job.asset_layer.asset_graph.asset_check_keys
                if check_key.asset_key in selected
            ),
            "partitions": partitions_str(job.partitions_def),
        }

    schedules = {
        schedule.name: {
            "cron": schedule.cron_schedule,
            "job": schedule.job_name,
            "timezone": schedule.execution_timezone,
            "default_status": schedule.default_status.value,
        }
        for schedule in definitions.schedules or []
    }
    sensors = {
        sensor.name: {
            "type": sensor.sensor_type.value,
            "jobs": sorted(job.name for job in sensor.jobs) if sensor.has_jobs else [],
            "assets": (
                sorted(key_str(k) for k in sensor.asset_selection.resolve(graph))
                if sensor.asset_selection is not None
                else []
            ),
            "default_status": sensor.default_status.value,
        }
        for sensor in definitions.sensors or []
    }
    return {
        "assets": assets,
        "jobs": jobs,
        "schedules": schedules,
        "sensors": sensors,
        "resources": sorted(definitions.resources or {}),
    }


def render(snapshot: dict[str, Any]) -> str:
    """The snapshot as the file holds it: sorted keys, two-space indent, a trailing newline."""
    return json.dumps(snapshot, indent=2, sort_keys=True) + "\n"


def changed_paths(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Where two snapshots differ, as `assets › trained_model › deps`: the diff's hunks do not always show which
    asset they are in (an automation condition is long)."""
    where = " › ".join(path) or "(top)"
    if isinstance(old, dict) and isinstance(new, dict):
        found = [f"- {' › '.join((*path, k))} (removed)" for k in sorted(old.keys() - new.keys())]
        found += [f"+ {' › '.join((*path, k))} (added)" for k in sorted(new.keys() - old.keys())]
        for k in sorted(old.keys() & new.keys()):
            found += changed_paths(old[k], new[k], (*path, k))
        return found
    return [] if old == new else [f"~ {where}"]


def snapshot_diff(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """Empty when the snapshots match; else the changed entries, then a unified diff of the rendered files."""
    if recorded == current:
        return ""
    diff = difflib.unified_diff(
        render(recorded).splitlines(keepends=True),
        render(current).splitlines(keepends=True),
        fromfile="snapshot",
        tofile="current",
    )
    return "changed entries:\n" + "\n".join(changed_paths(recorded, current)) + "\n\n" + "".join(diff)


def test_definitions_match_snapshot() -> None:
    """The live Definitions match the recorded snapshot; `SI_UPDATE_SNAPSHOT=1` records them instead."""
    if os.environ.get(CRON_ENV):
        pytest.skip(f"${CRON_ENV} changes the schedule's cron; the snapshot holds the default")
    current = definitions_snapshot(defs)
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(render(current))
        return
    if not SNAPSHOT.exists():
        pytest.fail(f"no snapshot at {SNAPSHOT}: {UPDATE_HINT}", pytrace=False)
    diff = snapshot_diff(json.loads(SNAPSHOT.read_text()), current)
    if diff:
        pytest.fail(
            f"the Definitions differ from {SNAPSHOT.relative_to(ROOT)}\n\n{diff}\n{UPDATE_HINT}",
            pytrace=False,
        )


def test_snapshot_diff_names_a_changed_dependency() -> None:
    """A real change is caught: the same Definitions with `trained_model` re-declared without its
    `verified_pairs` input give a diff that names both. The stand-in asset never runs."""
    live = defs.resolve_assets_def("trained_model")
    spec = live.get_asset_spec(dg.AssetKey("trained_model"))
    deps = [dep for dep in spec.deps if dep.asset_key != dg.AssetKey("verified_pairs")]
    assert len(deps) == len(spec.deps) - 1, "trained_model no longer depends on verified_pairs: pick another dep"
    (op,) = ops_of(live.node_def).values()

    @dg.asset(
        name="trained_model",
        group_name=spec.group_name,
        deps=deps,
        partitions_def=spec.partitions_def,
        code_version=spec.code_version,
        automation_condition=spec.automation_condition,
        pool=op["pool"],
        op_tags=op["tags"],
    )
    def stand_in() -> None:
        raise AssertionError("never materialized")

    changed = dg.Definitions(
        assets=[a for a in defs.assets or [] if dg.AssetKey("trained_model") not in getattr(a, "keys", ())]
        + [stand_in],
        jobs=defs.jobs,
        schedules=defs.schedules,
        sensors=defs.sensors,
        resources=defs.resources,
    )
    diff = snapshot_diff(definitions_snapshot(defs), definitions_snapshot(changed))
    assert "~ assets › trained_model › deps" in diff
    removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert any('"verified_pairs"' in line for line in removed), diff
    assert not any("verified_pairs" in line for line in added), diff
    assert "+++ current" in diff and "--- snapshot" in diff
