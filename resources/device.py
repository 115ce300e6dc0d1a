"""Which device and precision the heavy steps run on."""

from typing import Literal

import dagster as dg
import torch
from pydantic import Field

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ComputeDevice(dg.ConfigurableResource):
    """`auto` picks CUDA when present (bf16 where supported), CPU otherwise."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto: bfloat16 on a GPU that supports it, float32 otherwise"
    )
    cpu_threads: int = Field(0, ge=0, description="torch intra-op threads on CPU; 0 keeps torch's default")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={self.device!r} was configured but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device(self.device)

    def shard_device(self, shard: int) -> torch.device:
        """Shard k of a parallel step on GPU k mod the GPU count (one GPU per pool slot); else the device."""
        device = self.torch_device()
        if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
            return torch.device("cuda", shard % torch.cuda.device_count())
        return device

    def torch_dtype(self) -> torch.dtype:
        device = self.torch_device()
        if self.dtype == "auto":
            bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if bf16 else torch.float32
        if self.dtype == "float16" and device.type == "cpu":
            raise RuntimeError("dtype 'float16' on CPU is slow and unstable; use 'float32' or 'bfloat16'")
        return DTYPES[self.dtype]

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
