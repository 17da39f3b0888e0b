"""The one training loop, shared by Stage 1 (`pretrain`) and Stage 2 (`align`).

A *task* says what one batch is and what its loss is; the loop owns everything else: data order,
optimizer steps, gradient accumulation, AMP, DDP, checkpoints, resume, progress, the JSONL metric
log and the evaluation at each epoch end. The shape is nanoGPT's train loop, made reusable.

    class MyTask:                                   # see `Task` for the full contract
        def train_size(self): return len(pairs)
        def make_batch(self, indices): return {...tensors...}
        def loss(self, model, batch): return loss, {"acc": 0.5}
        def evaluate(self, model): return {"recall@10": 0.3}

    result = train(model, MyTask(), LoopConfig(epochs=3, batch_size=64), out_dir="runs/x")

Determinism and resume: the order of examples in epoch e is a permutation drawn from (seed, e), so
a position in the run is just (epoch, optimizer step within the epoch). A checkpoint stores that
position with the model, optimizer, LR scheduler, AMP grad scaler and every rank's RNG states; a
run resumed from it continues exactly as the uninterrupted run would have.

DDP: launch with `torchrun --nproc_per_node N ...`; `train` joins the process group (gloo on CPU,
NCCL on GPU). Each rank takes its own `batch_size` slice of every global batch of
`batch_size * world_size` examples; losses gather across ranks through `dashclip.losses.gather`.
"""
from __future__ import annotations

import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data.images import read_ahead
from ..io import append_jsonl, atomic_path, read_jsonl, write_jsonl
from ..optim import adamw, cosine_schedule, param_groups
from ..precision import AMP_CHOICES, autocast, resolve_amp

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.jsonl"


class Task(Protocol):
    """What a training stage supplies to `train`.

    train_size()            number of training examples; the loop shuffles indices 0..n-1.
    make_batch(indices)     the batch for those examples (tensors on CPU; the loop moves them).
    loss(model, batch)      (scalar loss tensor, dict of float metrics to log). Called inside AMP
                            autocast and, under DDP, inside the DDP wrapper's forward.
    evaluate(model)         dict of float metrics; run on rank 0 only, under no_grad, at each epoch
                            end (so it must not call collectives). May return {}.
    train_mode(model)       optional: put the model in training mode (e.g. keep a frozen tower in
                            eval mode so its BatchNorm statistics do not move).
    """

    def train_size(self) -> int: ...
    def make_batch(self, indices: list[int]) -> Any: ...
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict]: ...
    def evaluate(self, model: nn.Module) -> dict: ...


@dataclass
class LoopConfig:
    epochs: int = 1
    batch_size: int = 64            # examples per rank per micro-step
    accum_steps: int = 1            # micro-steps per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.05      # not applied to biases, norms and 1-d parameters (logit_scale)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1       # cosine decay ends at lr * min_lr_ratio
    grad_clip: float | None = 1.0
    amp: str | None = None          # None, "bf16", "fp16" or "auto" (bf16 where native: see dashclip.precision)
    ckpt_every: int = 0             # optimizer steps between checkpoints (0: epoch ends and the end)
    max_steps: int | None = None    # stop after this many optimizer steps in total
    seed: int = 0
    log_every: int = 10
    eval_every_epoch: bool = True
    resume: bool = False
    progress: bool = True
    tensorboard: bool = False
    device: str | None = None       # default: cuda:<local rank> when available, else cpu
    find_unused_parameters: bool = False   # DDP: set when the loss leaves some trainable parameters unused
    lr_scales: dict | None = None   # parameter-name prefix -> lr multiplier (see param_groups)
    # Threads that make the next micro-batches while the model computes this one (0: each batch is made
    # when it is needed). For tasks whose make_batch is a pure function of its indices, as Stage 1's is,
    # so the run and its resume stay the same. On a GPU, decoding images on the main thread left it idle
    # 75% of the time (benchmarks/results/gpu.md).
    loader_workers: int = 0

    def __post_init__(self):
        if self.amp not in (None, *AMP_CHOICES):
            raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)} or none, not {self.amp!r}")
        for name in ("epochs", "batch_size", "accum_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers must be >= 0, not {self.loader_workers}")


@dataclass
class TrainResult:
    step: int                                   # optimizer steps done in total
    epoch: int                                  # epochs completed
    evals: list[dict] = field(default_factory=list)   # one row per evaluation (rank 0)
    last: dict = field(default_factory=dict)    # last logged training metrics
    seconds: float = 0.0                        # wall time of this invocation
    examples: int = 0                           # examples (pairs) trained on in this invocation, all ranks


# ----------------------------------------------------------------------------------------------
# Distributed setup


def init_distributed() -> tuple[int, int, int]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). Returns
    (rank, world_size, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def finish_distributed() -> None:
    """The end of a torchrun job that went well: every rank waits for the others, then leaves the process
    group. A rank that finished first and exited without this tore gloo down while its last message to a
    slower rank (rank 0 still writing the checkpoint) was in flight, and aborted ("terminate called without
    an active exception") after the work was done. Called by the process's owner (the CLI), not by
    `train`, whose callers may go on using the group."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def pick_device(device: str | None = None, local_rank: int = 0) -> torch.device:
    """`device` when given, else cuda:<local rank> when a GPU is there, else cpu. A bare "cuda" means this
    rank's GPU: torch.cuda.set_device refuses a cuda device without an index."""
    if device:
        picked = torch.device(device)
        return torch.device("cuda", local_rank) if picked.type == "cuda" and picked.index is None else picked
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _barrier():
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------------------------
# Pieces of the loop


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of examples in one epoch: a permutation drawn from (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def rank_batch(order: np.ndarray, micro: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Indices of this rank's slice of global micro-batch number `micro`."""
    start = micro * batch_size * world + rank * batch_size
    return order[start:start + batch_size].tolist()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class _TaskStep(nn.Module):
    """Puts `task.loss` inside a module's forward, so DDP sees the forward pass it needs to
    synchronise gradients (the task calls the model's methods, not its forward)."""

    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch):
        return self.task.loss(self.model, batch)


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


# ----------------------------------------------------------------------------------------------
# The loop


def train(model: nn.Module, task: Task, cfg: LoopConfig, out_dir: str | Path) -> TrainResult:
    """Train `model` on `task`; checkpoints and metrics.jsonl go to `out_dir`. See module docs."""
    out_dir = Path(out_dir)
    rank, world, local_rank = init_distributed()
    is_main = rank == 0
    device = pick_device(cfg.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model.to(device)

    n = task.train_size()
    micro_per_epoch = n // (cfg.batch_size * world)      # drop_last: every rank gets equal batches
    steps_per_epoch = micro_per_epoch // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{n} training examples are fewer than one optimizer step needs "
                         f"(batch {cfg.batch_size} x {world} ranks x {cfg.accum_steps} accumulation)")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = adamw(param_groups(model, cfg.weight_decay, cfg.lr, cfg.lr_scales), device, lr=cfg.lr,
                      betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_schedule(total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
    amp = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    step, epoch, step_in_epoch = 0, 0, 0
    seed_everything(cfg.seed + rank)
    ckpt_file = checkpoint_path(out_dir)
    metrics_file = out_dir / METRICS_FILE
    if cfg.resume and ckpt_file.exists():
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)  # our own file: RNG states are not tensors
        if ckpt["world_size"] != world:
            raise ValueError(f"{ckpt_file}: saved with {ckpt['world_size']} ranks, resumed with {world}; "
                             "the data order would change")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, epoch, step_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["step_in_epoch"]
        set_rng_state(ckpt["rng"][rank])
        if is_main and metrics_file.exists():   # forget what was logged after the checkpoint
            write_jsonl(metrics_file, [r for r in read_jsonl(metrics_file) if r.get("step", 0) <= step])
        del ckpt
    elif is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if metrics_file.exists():
            metrics_file.unlink()
    _barrier()

    step_module = _TaskStep(model, task)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters)

    writer = None
    if cfg.tensorboard and is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            print("tensorboard is not installed; metrics go to metrics.jsonl only")

    def log(row: dict) -> None:
        if not is_main:
            return
        append_jsonl(metrics_file, row)
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    writer.add_scalar(f"{row.get('kind', 'train')}/{k}", v, row["step"])

    def save_checkpoint() -> None:
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "rng": states,
                     "world_size": world, "config": asdict(cfg)}
            with atomic_path(ckpt_file) as tmp:
                torch.save(state, tmp)
        _barrier()

    def evaluate() -> dict:
        row = {}
        if is_main:
            model.eval()
            rng_devices = [device.index or 0] if device.type == "cuda" else []
            # eval must not move training RNG; it runs in the training precision
            with torch.random.fork_rng(devices=rng_devices), torch.no_grad(), autocast(device, amp):
                row = {"kind": "eval", "step": step, "epoch": epoch, **task.evaluate(model)}
            log(row)
        _barrier()
        return row

    def set_train_mode():
        (task.train_mode if hasattr(task, "train_mode") else nn.Module.train)(model)

    from ..clihelp import progress as progress_bar

    result = TrainResult(step=step, epoch=epoch)
    t_start = time.time()
    bar = progress_bar(disable=not (cfg.progress and is_main))
    bar.start()
    bar_task = bar.add_task("training", total=total_steps, completed=step)
    set_train_mode()
    last_eval_step = -1
    window = {"loss": 0.0, "n": 0, "t": time.time(), "examples": 0}

    try:
        while step < total_steps and epoch < cfg.epochs:
            order = epoch_order(n, cfg.seed, epoch)
            last_micro = min(steps_per_epoch, step_in_epoch + total_steps - step) * cfg.accum_steps
            micros = range(step_in_epoch * cfg.accum_steps, last_micro)
            make = lambda micro: task.make_batch(rank_batch(order, micro, cfg.batch_size, rank, world))  # noqa: E731
            batches = read_ahead(make, micros, cfg.loader_workers) if cfg.loader_workers else map(make, micros)
            while step_in_epoch < steps_per_epoch and step < total_steps:
                metrics_sum: dict[str, float] = {}
                for a in range(cfg.accum_steps):
                    batch = to_device(next(batches), device)
                    sync = world == 1 or a == cfg.accum_steps - 1
                    with (nullcontext() if sync else step_module.no_sync()):
                        with autocast(device, amp):
                            loss, metrics = step_module(batch)
                        scaler.scale(loss / cfg.accum_steps).backward()
                    metrics_sum["loss"] = metrics_sum.get("loss", 0.0) + loss.item() / cfg.accum_steps
                    for k, v in metrics.items():
                        metrics_sum[k] = metrics_sum.get(k, 0.0) + float(v) / cfg.accum_steps
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                step_in_epoch += 1
                examples = cfg.batch_size * world * cfg.accum_steps
                result.examples += examples
                window["loss"] += metrics_sum["loss"]
                window["n"] += 1
                window["examples"] += examples
                bar.update(bar_task, completed=step,
                           description=f"epoch {epoch + 1}/{cfg.epochs} loss {metrics_sum['loss']:.3f}")
                if step % cfg.log_every == 0 or step == total_steps:
                    elapsed = max(1e-9, time.time() - window["t"])
                    row = {"kind": "train", "step": step, "epoch": epoch, **metrics_sum,
                           "loss_avg": window["loss"] / window["n"], "lr": max(scheduler.get_last_lr()),
                           "pairs_per_s": window["examples"] / elapsed}
                    log(row)
                    result.last = row
                    window = {"loss": 0.0, "n": 0, "t": time.time(), "examples": 0}
                if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < total_steps:
                    save_checkpoint()
            if step_in_epoch >= steps_per_epoch:       # a whole epoch is done
                epoch += 1
                step_in_epoch = 0
                if cfg.eval_every_epoch:
                    result.evals.append(evaluate())
                    last_eval_step = step
                    set_train_mode()
                if step < total_steps:
                    save_checkpoint()
        if world > 1:
            # DDP copies rank 0's buffers (BatchNorm statistics) to the others at each forward; the
            # last forward's updates still differ, so end with rank 0's everywhere.
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        if cfg.eval_every_epoch and last_eval_step != step:
            result.evals.append(evaluate())       # stopped mid-epoch by max_steps
        save_checkpoint()
    finally:
        bar.stop()
        if writer is not None:
            writer.close()
    result.step, result.epoch, result.seconds = step, epoch, time.time() - t_start
    model.eval()
    return result
