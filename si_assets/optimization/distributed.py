"""DPO across processes: `trained_model` (with `launcher: torchrun`) writes a job file and launches this module
under `torchrun` through Dagster Pipes. Every rank loads the seed and the pairs, and TRL's trainer (through
accelerate) trains data-parallel: NCCL on GPUs (one per rank), gloo on CPU. Rank 0 saves the adapter and the
merged model and reports logs and the result back to the Dagster step over Pipes.

    torchrun --standalone --nproc-per-node N -m si_assets.optimization.distributed JOB.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import torch
import torch.distributed as dist
from dagster_pipes import PipesContext, open_dagster_pipes

from si_assets.modeling.loading import load_checkpoint
from si_assets.optimization.dpo import DPOResult, DPOSettings, save_trained, train_dpo
from si_assets.world import decode_png


@dataclass(frozen=True)
class DistributedJob:
    """What every rank needs, as files: the seed, the pairs with their images, cached reference log-probs."""

    checkpoint: str
    pairs: str  # parquet: pair_id, image_id, prompt, chosen, rejected
    images: str  # parquet: id, image_png
    reference: str  # parquet: pair_id + reference columns
    settings: dict
    output: str  # the merged model goes here, the adapter into output/adapter
    work_dir: str
    device: str  # "cpu" or "cuda"
    dtype: str  # torch dtype name, e.g. "float32"
    trust_remote_code: bool = False

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def read(cls, path: str | Path) -> DistributedJob:
        return cls(**json.loads(Path(path).read_text()))


def torchrun_command(job_file: Path, processes: int) -> list[str]:
    """One node, `processes` workers, a free rendezvous port (`--standalone`)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={processes}",
        "-m",
        "si_assets.optimization.distributed",
        str(job_file),
    ]


def prepare_job(
    checkpoint: Path,
    pairs: pl.DataFrame,
    images: pl.DataFrame,
    reference: pl.DataFrame,
    settings: DPOSettings,
    processes: int,
    output: Path,
    work_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
) -> Path:
    """Writes the inputs every rank reads and the job file; the per-process batch keeps the global batch size."""
    work_dir.mkdir(parents=True, exist_ok=True)
    pairs.write_parquet(work_dir / "pairs.parquet")
    images.select("id", "image_png").write_parquet(work_dir / "images.parquet")
    reference.write_parquet(work_dir / "reference.parquet")
    per_process = settings.model_copy(update={"batch_size": max(1, settings.batch_size // processes)})
    job = DistributedJob(
        checkpoint=str(checkpoint),
        pairs=str(work_dir / "pairs.parquet"),
        images=str(work_dir / "images.parquet"),
        reference=str(work_dir / "reference.parquet"),
        settings=per_process.model_dump(),
        output=str(output),
        work_dir=str(work_dir / "trainer"),
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        trust_remote_code=trust_remote_code,
    )
    return job.write(work_dir / "job.json")


def result_of(message: dict) -> DPOResult:
    return DPOResult(message["seconds"], message["steps"], message["curve"], reference_computed=False)


@contextmanager
def rank_zero_pipes() -> Iterator[PipesContext | None]:
    """Pipes on rank 0 only: one writer reports for the group."""
    if int(os.environ.get("RANK", "0")) == 0:
        with open_dagster_pipes() as pipes:
            yield pipes
    else:
        yield None


def run(job: DistributedJob, pipes: PipesContext | None) -> dict:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if job.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model, processor = load_checkpoint(job.checkpoint, device, getattr(torch, job.dtype), job.trust_remote_code)
    images = pl.read_parquet(job.images)
    image_by_id = {i: decode_png(b) for i, b in zip(images["id"], images["image_png"])}
    log = pipes.log.info if pipes else None
    started = time.perf_counter()
    peft_model, _, result = train_dpo(
        model,
        processor,
        pl.read_parquet(job.pairs),
        image_by_id,
        DPOSettings(**job.settings),
        Path(job.work_dir),
        reference=pl.read_parquet(job.reference),
        log=log,
    )
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    backend = dist.get_backend() if dist.is_initialized() else "none"
    if pipes is not None:
        pipes.log.info(f"DPO on {world_size} processes ({backend}): {result.steps} steps in {result.seconds:.1f}s")
        save_trained(
            peft_model,
            processor,
            Path(job.output),
            Path(job.output) / "adapter",
            Path(job.checkpoint),
            job.trust_remote_code,
        )
    if dist.is_initialized():
        dist.barrier()  # every rank is done before rank 0 reports and the group exits
    return {
        "steps": result.steps,
        "seconds": result.seconds,
        "wall_seconds": time.perf_counter() - started,
        "curve": result.curve,
        "world_size": world_size,
        "backend": backend,
    }


def main(argv: list[str]) -> None:
    job = DistributedJob.read(argv[0])
    with rank_zero_pipes() as pipes:
        outcome = run(job, pipes)
        if pipes is not None:
            pipes.report_custom_message(outcome)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
