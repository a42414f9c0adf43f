"""Data-parallel training on PyTorch's own engine, ``torch.distributed``.

Every worker holds the whole model and walks the same sample order (the order
generator is seeded alike everywhere).  Each global batch — the size the spec
says, whatever the number of workers — is cut into one contiguous shard per
worker; a worker infers z on its shard only, and scales its energy by the
*global* batch size, so that summing the workers' gradients (one all-reduce of
one flat buffer per step) gives exactly the gradient of the global batch's mean
energy.  With identical gradients and optimizer states, every worker takes the
same step and applies the same constraints: parameters never drift apart.  Only
rank 0 evaluates and writes the run directory.

``energydsl run SPEC --nproc N`` starts N local workers with torchrun's launcher
(``torch.distributed.run``); ``torchrun ... -m energydsl.cli run SPEC`` works too,
also across nodes.  Workers talk over gloo on CPU and nccl on GPUs.

Leaving cleanly matters: :func:`finish` must really free the process group, so
that its backend's threads are joined while the interpreter is alive (see
:func:`_import_group_capturing_modules`).
"""

from __future__ import annotations

import gc
import importlib
import os
import subprocess
import sys
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from energydsl.errors import UserError


@dataclass(frozen=True)
class Workers:
    """Where this process stands among the workers of one run (one worker: no communication)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    # where collectives' tensors live (nccl: the GPU); a torch.device is immutable, safe as a default
    device: torch.device = torch.device("cpu")  # noqa: RUF009

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This worker's contiguous part of a global batch of sample indices."""
        return batch.tensor_split(self.size)[self.rank] if self.size > 1 else batch

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all workers, in place."""
        if self.size > 1:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every worker when it is true on one (Ctrl-C reaches workers at different steps)."""
        if self.size == 1:
            return flag
        return bool(self.sum_(torch.tensor([float(flag)], device=self.device)).item())

    def gather(self, vector: torch.Tensor) -> torch.Tensor:
        """Every worker's ``vector`` (of the same length everywhere), concatenated in rank order."""
        if self.size == 1:
            return vector
        parts = [torch.empty_like(vector) for _ in range(self.size)]
        dist.all_gather(parts, vector.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum_gradients_(self, parameters) -> None:
        """Sum every gradient over the workers: one all-reduce of one flat buffer."""
        if self.size == 1:
            return
        self.sum_all_([p.grad for p in parameters if p.grad is not None])

    def sum_all_(self, tensors: list[torch.Tensor]) -> None:
        """Sum every tensor over the workers, in place: one all-reduce of one flat buffer."""
        if self.size == 1 or not tensors:
            return
        flat = self.sum_(_flatten_dense_tensors(tensors))
        for tensor, summed in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
            tensor.copy_(summed)


SINGLE = Workers()


def from_environment(device: torch.device | None) -> Workers:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else work alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = device is not None and device.type == "cuda"
    if on_gpu:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        _import_group_capturing_modules()
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    device = torch.device("cuda", local_rank) if on_gpu else torch.device("cpu")
    return Workers(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, device=device)


# torch modules whose functions take ``group=group.WORLD`` as a default argument.  Python
# evaluates defaults at import, and torch imports these lazily (the first optimizer imports
# torch._dynamo, which imports them): imported after init_process_group, they hold the
# default group for good.
GROUP_CAPTURING_MODULES = ("torch.distributed.nn.functional",)


def _import_group_capturing_modules() -> None:
    """Import, before the group exists, the modules that would otherwise keep it alive.

    A group that outlives :func:`dist.destroy_process_group` keeps gloo's worker
    threads running into interpreter shutdown.  A worker thread that is still
    releasing the last collective's tensors then needs the GIL, and a thread
    that asks for the GIL while Python finalizes is ended by ``pthread_exit``,
    whose unwinding through a ``noexcept`` destructor calls ``std::terminate``:
    "terminate called without an active exception", SIGABRT, now and then (the
    last collective races the interpreter's exit), although the run is written.
    """
    for name in GROUP_CAPTURING_MODULES:
        importlib.import_module(name)


def finish(workers: Workers, together: bool = True) -> bool:
    """Leave the group, after every worker got here when ``together`` (after an error,
    leave at once rather than wait for the others).  Returns whether the group is
    really gone, its threads joined; a group that something still holds outlives
    this call and can abort the process at exit (see :func:`_import_group_capturing_modules`)."""
    if workers.size == 1 or not dist.is_initialized():
        return True
    if together:
        dist.barrier()
    group = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()  # the last reference: joins the backend's threads, GIL released
    gc.collect()  # in case a reference cycle held it
    if group() is None:
        return True
    print(f"energydsl: warning: rank {workers.rank}: the process group outlived destroy_process_group "
          "(something still holds it); the worker may abort at exit", file=sys.stderr)  # fmt: skip
    return False


def launch(nproc: int, argv: list[str], nnodes: str = "1", rdzv_endpoint: str | None = None) -> int:
    """Start ``energydsl ARGV`` as ``nproc`` workers per node with torchrun's launcher."""
    if nproc < 1:
        raise UserError(f"--nproc {nproc}: expected at least 1 worker")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if rdzv_endpoint is None:
        command.append("--standalone")  # one node: a private rendezvous on a free port
    else:
        command += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    command += ["-m", "energydsl.cli", *argv]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))  # share the cores
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": threads}, check=False).returncode
