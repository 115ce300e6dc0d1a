"""Which device and precision the heavy steps run on."""

import dagster as dg
import torch
from pydantic import Field


class ComputeDevice(dg.ConfigurableResource):
    """`auto` picks CUDA when present (bf16 where supported), CPU otherwise."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    cpu_threads: int = Field(0, ge=0, description="torch intra-op threads on CPU; 0 keeps torch's default")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={self.device!r} was configured but CUDA is not available; use 'auto' or 'cpu'")
        return torch.device(self.device)

    def dtype(self) -> torch.dtype:
        dev = self.torch_device()
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)
