"""`make demo` / `make demo-rounds`: the embedded default end to end on a persistent instance (`--config` runs
the rounds with your own run config instead: model, images, evaluation; `--bootstrap-config` the bootstrap, e.g.
another world).

Bootstraps the world and models (reused when unchanged), runs rounds `round-0001` ... `round-000N` (each
starts from the champion the rounds before it promoted), refreshes the rounds summary and prints the tables.
Re-running repeats the same rounds with the same results: rounds are partitions, not "one more round".
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import polars as pl
import yaml

# Written once into a new DAGSTER_HOME (edit it freely afterwards). The `gpu` pool lets one heavy step hold the
# accelerator at a time; with N GPUs: `dagster instance concurrency set gpu N`.
INSTANCE_SETTINGS = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"


def prepare_instance() -> Path:
    """DAGSTER_HOME (default `.dagster_home`) with its settings; what `make demo` and `make ui` share."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_SETTINGS)
    return home


def per_round_configs(items: list[str]) -> dict[int, dict]:
    """`--round-config` items (`N=YAML`) as round number -> run config."""
    configs = {}
    for item in items:
        number, _, path = item.partition("=")
        if not number.isdigit() or int(number) < 1 or not path:
            raise ValueError(f"--round-config {item!r}: expected N=YAML with N ≥ 1, e.g. 3=round3.yaml")
        configs[int(number)] = yaml.safe_load(Path(path).read_text()) or {}
    return configs


# The ops whose `seed` a round seed sets: the round's sampling, its pair draws and its training.
SEEDED_OPS = ("collected_responses", "verified_pairs", "trained_model")


def with_round_seed(run_config: dict, seed: int) -> dict:
    """`run_config` with `seed` as the seed of the round's sampling, verification and training (a round seed
    varies the whole round)."""
    seeded = copy.deepcopy(run_config)
    ops = seeded.setdefault("ops", {})
    for op in SEEDED_OPS:
        ops.setdefault(op, {}).setdefault("config", {})["seed"] = seed
    return seeded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds to run (default 1)")
    parser.add_argument("--config", type=Path, help="run config (YAML) for every round: your model, images, eval")
    parser.add_argument("--bootstrap-config", type=Path, help="run config (YAML) of the bootstrap: world, models")
    parser.add_argument(
        "--round-config",
        action="append",
        default=[],
        metavar="N=YAML",
        help="run config of round N in place of --config (repeatable)",
    )
    parser.add_argument(
        "--round-seed",
        type=int,
        metavar="N",
        help="seed of every round's sampling, verification and training (default: the configs' own, else 0)",
    )
    parser.add_argument("--plot", type=Path, help="also write the rounds summary's plot (PNG) to this file")
    args = parser.parse_args(argv)
    run_config = yaml.safe_load(args.config.read_text()) if args.config else {}
    try:
        round_configs = per_round_configs(args.round_config)
    except ValueError as bad:
        parser.error(str(bad))
    if args.round_seed is not None:
        if args.round_seed < 0:
            parser.error(f"--round-seed {args.round_seed}: a seed is ≥ 0")
        run_config = with_round_seed(run_config, args.round_seed)
        round_configs = {n: with_round_seed(c, args.round_seed) for n, c in round_configs.items()}
    bootstrap_config = yaml.safe_load(args.bootstrap_config.read_text()) if args.bootstrap_config else {}
    home = prepare_instance()
    import dagster as dg

    from si_assets.automation.jobs import bootstrap_job, improvement_round_job
    from si_assets.automation.runner import (
        RoundFailed,
        RunConfigError,
        check_run_config,
        refresh_summary,
        release_dead_runs,
        run_bootstrap,
        run_round,
        stored_table,
    )
    from si_assets.definitions import defs
    from si_assets.organization.probes import PROBE
    from si_assets.organization.verification import CAPTION, decision_counts
    from si_assets.rounds import round_key
    from si_assets.rounds.summary import headline_table, plot_rounds

    # every config is checked before the first step runs: a typo in round 3's config fails now, not an hour in
    rounds = range(1, args.rounds + 1)
    checks = {"--config": run_config} if any(n not in round_configs for n in rounds) else {}
    checks |= {f"--round-config {n}": config for n, config in round_configs.items() if n in rounds}
    try:
        check_run_config(defs.resolve_job_def(bootstrap_job.name), bootstrap_config, "--bootstrap-config")
        for name, config in checks.items():
            check_run_config(defs.resolve_job_def(improvement_round_job.name), config, name)
    except RunConfigError as bad:
        parser.error(str(bad))

    started = time.perf_counter()
    table_style = pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=200,
        float_precision=3,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
    )
    with dg.DagsterInstance.get() as instance, table_style:
        for run_id in release_dead_runs(instance):
            print(f"run {run_id} was left running by a process that is gone: marked failed, its pool slots freed")
        try:
            run_bootstrap(defs, instance, bootstrap_config)
            for number in rounds:
                run = run_round(defs, instance, round_key(number), round_configs.get(number, run_config))
                pairs = stored_table(defs, instance, "verified_pairs", run.key)
                counts = decision_counts(pairs)
                scores = stored_table(defs, instance, "eval_scores", run.key)
                decided = ", ".join(f"{n} {d}" for d, n in counts.items())
                tasks = dict(pairs.group_by("task").len().iter_rows())
                added = "".join(f", {tasks[t]} {t} pairs" for t in sorted(tasks) if t not in (CAPTION, PROBE))
                print(f"\n{run.key}: verified pairs {decided}; {tasks.get(PROBE, 0)} yes/no probes{added}")
                print("held-out evaluation, 95% bootstrap intervals; test is reported, dev gates the promotion")
                print("(precision: distinct named objects present / distinct named; POPE averaged over strategies):")
                print(headline_table(scores))
                verdict = "REFUSED: the seed stays champion" if run.refused else "passed"
                print(f"{run.key}: promotion gate (dev) {verdict}")
        except RoundFailed as failure:
            print(failure, file=sys.stderr)
            return 1
        summary: pl.DataFrame = refresh_summary(defs, instance).output_for_node("rounds_summary")
        shown = ["round", "kept", "reversed", "discarded", "seed_precision", "trained_precision"]
        shown += ["seed_recall", "trained_recall", "seed_pope_f1", "trained_pope_f1", "gate_passed", "promoted"]
        print("\nrounds so far (test split):")
        print(summary.select([c for c in shown if c in summary.columns]))
        if args.plot:
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            args.plot.write_bytes(plot_rounds(summary))
            print(f"plot of the rounds: {args.plot}")
    print("every metric, POPE per strategy, the lineage and plots: the assets in the UI")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; Dagster instance: {home}")
    print("browse it with: make ui   (http://127.0.0.1:3000)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
