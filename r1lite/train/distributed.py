"""Many processes through torchrun: which rank this is, how the work is split, the collectives a
run uses, and FSDP2 sharding.

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT] -m r1lite train …`` starts
N x M copies of one command. Each reads its place from the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``; :func:`launch_from_env`), and :func:`start` joins them in one
process group with the backend its runtime names (gloo on CPUs, NCCL on GPUs:
:attr:`r1lite.models.Runtime.backend`), ``--dist-timeout`` bounding every collective. Without
torchrun the :class:`World` has one rank and each collective returns its input: one code path.

How a GRPO run is split, so that it computes the one-process run's numbers at any world size (up
to the order of floating-point sums):

- a step's prompts are sharded contiguously by rank (:meth:`World.span`); a group's G completions
  stay on its prompt's rank, and a prompt samples with a seed fixed by (seed, step, round, its
  index in the whole step), so the completions do not depend on the world size;
- the groups' rewards are gathered (:meth:`World.gather`): dynamic sampling keeps and refills on
  the whole batch, batch-std advantages see every reward, the step's metrics every group;
- the loss normaliser (dapo: counted tokens; grpo: counted completions) is summed over the ranks,
  so a rank's loss is its share of the one-process loss, and the gradients are summed
  (:meth:`World.sum_grads`). A rank whose groups all have zero advantage, or that has no group,
  adds zero gradients: every rank joins every collective;
- evaluations and the cold start (sampling and SFT) are sharded the same way;
- only rank 0 writes files and prints.

Departure from DDP: the gradients are summed after the micro-batches, one all-reduce per bucket,
rather than overlapped with the backward pass as DDP does, because ranks run different numbers of
micro-batches (dynamic sampling and skipped groups leave them unequal) and DDP needs equal ones.

FSDP2 (``--fsdp``, :meth:`World.shard`) shards weights, gradients and optimizer states: one unit
per decoder layer (:class:`r1lite.train.policy.LayerPass`) and the rest (embeddings, final norm, head) in
the root unit, the :class:`r1lite.train.policy.Policy`. Its gradients are reduced in the backward pass,
summed like the rest. Each training pass gathers weights, so FSDP needs every rank to run the same
number of passes; a rank with fewer makes up the difference with weight-0 passes
(:func:`r1lite.train.policy.dummy_batch`). The rollout engine gets the full weights gathered once per
step (:meth:`World.full_weights`); checkpoints hold full tensors, gathered from every rank and
written by rank 0 (:func:`full_tensor`), so a run saved at one world size resumes at another.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from r1lite.errors import UsageError

BUCKET_BYTES = 64 * 2 ** 20
"""Most bytes of gradients summed in one all-reduce (DDP's default bucket is 25 MB)."""


class EveryRank(UsageError):
    """A usage error every rank of the job raised: rank 0 reports it, the other ranks stay quiet."""


class CollectiveFailed(Exception):
    """A collective failed: another rank stopped, or did not answer within the timeout."""


@dataclass(frozen=True)
class Launch:
    """This process's place in the job, as torchrun's environment gives it."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    """The rank among the processes on this machine: the GPU this process takes."""


def launch_from_env() -> Launch:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (torchrun sets them); one process without them."""
    env = os.environ
    return Launch(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


@dataclass
class World:
    """The ranks of one job and the collectives between them (a no-op for one process)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout: float = 300.0
    fsdp: bool = False
    """Whether :meth:`shard` sharded the policy."""

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def span(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (shares differ by at most one).

        >>> [World(rank=r, size=3).span(8) for r in range(3)]
        [slice(0, 2, None), slice(2, 5, None), slice(5, 8, None)]
        """
        return slice(n * self.rank // self.size, n * (self.rank + 1) // self.size)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (float64)."""
        if self.size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: int) -> int:
        """The largest ``value`` of any rank."""
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def gather_lists(self, items: list) -> list:
        """Every rank's ``items`` concatenated in rank order: the whole of a sharded list."""
        return [x for part in self.gather(items) for x in part]

    def sum_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks, in buckets of at most ``BUCKET_BYTES``;
        a missing gradient counts as zeros. Under FSDP the backward pass already reduced them."""
        if self.size == 1 or self.fsdp:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in params:
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
            if size >= BUCKET_BYTES or p is params[-1]:
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                dist.all_reduce(flat)
                offset = 0
                for q in bucket:
                    q.grad.copy_(flat[offset:offset + q.grad.numel()].view_as(q.grad))
                    offset += q.grad.numel()
                bucket, size = [], 0

    def agree(self, config: dict) -> None:
        """Refuse a job whose ranks were launched with different configs."""
        configs = self.gather(config)
        for rank, other in enumerate(configs[1:], 1):
            diffs = [k for k in sorted(set(other) | set(config)) if other.get(k) != configs[0].get(k)]
            if diffs:
                k = diffs[0]
                raise UsageError(f"rank {rank} was launched with {k}={other.get(k)!r}, rank 0 with "
                                 f"{k}={configs[0].get(k)!r}; launch every rank with the same flags and recipe")

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Run a block on every rank, then compare: a usage error on any rank is raised on every
        rank (rank 0 reports it, naming the rank when it was not rank 0). Ends like a barrier."""
        error = None
        try:
            yield
        except UsageError as e:
            if self.size == 1:
                raise
            error = str(e)
        errors = self.gather(error)
        failed = [(rank, e) for rank, e in enumerate(errors) if e is not None]
        if failed:
            rank, message = failed[0]
            raise EveryRank(message if rank == 0 or message == errors[0] else f"rank {rank}: {message}") from None

    # -- FSDP2 ------------------------------------------------------------------------------------

    def shard(self, policy) -> None:
        """Shard ``policy`` with FSDP2: one unit per decoder layer, the rest in the root unit.
        Gradients are summed over the ranks, not averaged (the loss is already normalised)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if policy.layers is None:
            raise UsageError("--fsdp shards Llama-family models (llama, mistral, qwen2, qwen3) layer by layer; "
                             "this model is not one: drop --fsdp")
        mesh = init_device_mesh(self.device.type, (self.size,))
        in_layers: set[torch.nn.Parameter] = set()
        for unit in policy.layers:
            fully_shard(unit, mesh=mesh)
            in_layers.update(unit.parameters())
        # The layers are also children of the model inside the policy: the root leaves them to their
        # units. The root frees its weights after each forward too (FSDP would keep them for the
        # backward), so between passes every parameter is its shard: the KL reference swaps shards.
        fully_shard(policy, mesh=mesh, ignored_params=in_layers, reshard_after_forward=True)
        for unit in (*policy.layers, policy):
            unit.set_gradient_divide_factor(1.0)  # a plain sum (gloo has no pre-multiplied one)
            unit.set_force_sum_reduction_for_comms(True)
        self.fsdp = True

    @contextlib.contextmanager
    def full_weights(self, policy) -> Iterator[None]:
        """Inside the block the policy's modules hold their full weights as parameters (FSDP:
        gathered from every rank, then freed at the end; otherwise they already do). FSDP's
        ``state_dict()`` stays sharded: gather that with :func:`full_state`."""
        if not self.fsdp:
            yield
            return
        units = [*policy.layers, policy]
        with torch.no_grad():
            for unit in units:
                unit.unshard()
            try:
                yield
            finally:
                for unit in units:
                    unit.reshard()


def start(launch: Launch, runtime, timeout: float) -> World:
    """Join the job's process group (a one-process World without torchrun). ``runtime`` gives the
    device and the backend (:func:`r1lite.models.resolve_runtime`)."""
    if launch.size == 1:
        return World(device=runtime.device, timeout=timeout)
    if runtime.device.type == "cuda":
        torch.cuda.set_device(runtime.device)
    try:
        dist.init_process_group(runtime.backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, dist.DistError) as e:
        raise CollectiveFailed(f"rank {launch.rank}: the {launch.size} processes did not all join within the "
                               f"--dist-timeout of {timeout:g} s ({first_line(e)}); each rank's output says why") from None
    return World(launch.rank, launch.size, runtime.device, timeout)


def close() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def report_error(error: Exception) -> None:
    """Print ``error: …`` on stderr, once per job: rank 0 reports what every rank met (and a failed
    collective); another rank only an error of its own, naming itself."""
    launch = launch_from_env()
    if launch.rank > 0 and isinstance(error, (EveryRank, CollectiveFailed)):
        return
    where = f"rank {launch.rank}: " if launch.rank > 0 else ""
    print(f"error: {where}{error}", file=sys.stderr, flush=True)


def peer_failure(error: BaseException, world: World) -> CollectiveFailed | None:
    """The one-line error for a collective that failed because another rank stopped or did not
    answer within the timeout (gloo and NCCL report these as RuntimeError or DistError), else None."""
    if world.size == 1 or not (isinstance(error, dist.DistError)
                               or (isinstance(error, RuntimeError) and ("gloo/transport" in str(error) or "NCCL" in str(error)))):
        return None
    return CollectiveFailed(f"rank {world.rank}: a collective failed ({first_line(error)}): another rank stopped, or "
                            f"did not answer within the --dist-timeout of {world.timeout:g} s; its output says why")


def first_line(error: BaseException) -> str:
    """The gist of a torch.distributed message: its first sentence, without gloo's source location.

    >>> first_line(RuntimeError("[/x/gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer. This is "
    ...                         "typically caused by a remote worker hanging"))
    'Read error: Connection reset by peer'
    """
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    return text.split(". ")[0].rstrip(".")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP) tensor gathered whole; a plain tensor as it is. Every rank must call it
    for the same tensors in the same order (the gather is a collective)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state(obj, keep: bool = True):
    """``obj`` (a state dict: nested dicts and lists) with every tensor whole and on the CPU. With
    ``keep`` False (a rank that will not write it) each sharded tensor is gathered, as the
    collective needs, and dropped (None)."""
    if isinstance(obj, dict):
        return {k: full_state(v, keep) for k, v in obj.items()}
    if isinstance(obj, list):
        return [full_state(v, keep) for v in obj]
    if not isinstance(obj, torch.Tensor):
        return obj
    whole = full_tensor(obj)
    return whole.detach().cpu() if keep else None


def local_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a full tensor, placed as ``like`` is (a plain tensor when ``like`` is)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full.to(like.device)
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def check_launch(cfg, size: int) -> None:
    """Refuse a GRPO run (a :class:`~r1lite.train.config.GRPOConfig`) that ``size`` processes cannot
    share: prompts that do not divide, a teacher on several processes, FSDP for a model it cannot
    shard or on one process. Before any model loads."""
    from r1lite.models import llama_config, spec_config

    optim = cfg.optim
    if optim.prompts_per_step % size:
        raise UsageError(f"{size} processes do not divide the {optim.prompts_per_step} prompts of a step "
                         f"(batch_size {optim.batch_size} / group_size {optim.group_size}): launch a number of processes "
                         f"that divides {optim.prompts_per_step}, or set batch_size to a multiple of {optim.group_size * size}")
    if size > 1 and (cfg.cold_start.teacher or cfg.loss.objective != "grpo"):
        raise UsageError("a teacher (cold_start_teacher, objective on_policy_distill) runs in one process; launch "
                         "without torchrun, or distill first (r1lite distill) and pass the traces as cold_start_data")
    config = spec_config(cfg.model) if cfg.launch.fsdp else None
    if config is not None and not llama_config(config):
        raise UsageError(f"--fsdp shards Llama-family models (llama, mistral, qwen2, qwen3) layer by layer; "
                         f"{cfg.model} is {config.model_type}: drop --fsdp (plain torchrun data "
                         "parallelism runs it)")
    if cfg.launch.fsdp and size == 1:
        raise UsageError("--fsdp shards the model over the processes of a torchrun job, and this one runs alone: "
                         "launch it with torchrun --nproc-per-node N, or drop --fsdp")
