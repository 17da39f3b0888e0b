"""The shared training loop on a toy two-tower model: training, logs, accumulation, and resume
after a real kill -9 mid-epoch. Run as a script, this file is the toy training job the tests kill."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dashclip.losses import itc_loss
from dashclip.training.loop import LoopConfig, checkpoint_path, train


class ToyTwoTower(nn.Module):
    def __init__(self, dim_in: int = 6, dim: int = 4, dropout: float = 0.0):
        super().__init__()
        self.image = nn.Linear(dim_in, dim)
        self.text = nn.Sequential(nn.Linear(dim_in, 8), nn.Dropout(dropout), nn.Linear(8, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))


class ToyTask:
    """Pairs (x, x @ R) with ids shared by two consecutive pairs; optional RNG-driven noise."""

    def __init__(self, n: int = 64, noise: float = 0.0, sleep: float = 0.0, mse: bool = False):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.randn(6, 6, generator=g)
        self.ids = torch.arange(n) // 2
        self.noise, self.sleep, self.mse = noise, sleep, mse

    def train_size(self):
        return len(self.x)

    def make_batch(self, indices):
        return {"x": self.x[indices], "y": self.y[indices], "ids": self.ids[indices]}

    def loss(self, model, batch):
        if self.sleep:
            time.sleep(self.sleep)
        y = batch["y"] + self.noise * torch.randn_like(batch["y"])
        img, txt = model.image(batch["x"]), model.text(y)
        if self.mse:   # a per-example mean: accumulation must reproduce the big batch exactly
            return F.mse_loss(img, txt), {}
        loss, _ = itc_loss(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), batch["ids"], model.logit_scale)
        return loss, {"scale": model.logit_scale.exp().item()}

    def evaluate(self, model):
        img = F.normalize(model.image(self.x), dim=-1)
        txt = F.normalize(model.text(self.y), dim=-1)
        sim = txt @ img.t()
        hits = (self.ids[sim.argmax(1)] == self.ids).float().mean().item()
        return {"t2i_r1": hits, "noise_probe": torch.rand(()).item()}


def run_toy(out: Path, **overrides) -> tuple[ToyTwoTower, object]:
    task_args = {k: overrides.pop(k) for k in ("noise", "sleep", "mse", "n") if k in overrides}
    dropout = overrides.pop("dropout", 0.0)
    torch.manual_seed(0)
    model = ToyTwoTower(dropout=dropout)
    cfg = LoopConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-2, "progress": False, "log_every": 1,
                        **overrides})
    return model, train(model, ToyTask(**task_args), cfg, out)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol), (k, (a[k] - b[k]).abs().max())


def test_loop_trains_logs_and_checkpoints(tmp_path):
    model, result = run_toy(tmp_path, epochs=6, lr=3e-2, noise=0.05, dropout=0.1)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert result.step == 6 * (64 // 8) == len(train_rows)
    assert [r["epoch"] for r in evals] == [1, 2, 3, 4, 5, 6]  # one evaluation per epoch end
    assert train_rows[-1]["loss_avg"] < train_rows[0]["loss"]   # it learns
    assert evals[-1]["t2i_r1"] > 0.4 > evals[0]["t2i_r1"]        # chance is 2/64
    assert all(r["pairs_per_s"] > 0 and r["lr"] > 0 for r in train_rows)
    ckpt = torch.load(checkpoint_path(tmp_path), weights_only=False)
    assert ckpt["step"] == result.step and ckpt["epoch"] == 6
    assert_same_weights(ckpt["model"], model.state_dict())
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))    # atomic writes leave no debris


def test_gradient_accumulation_matches_big_batch(tmp_path):
    big, _ = run_toy(tmp_path / "big", batch_size=16, mse=True, grad_clip=None)
    acc, _ = run_toy(tmp_path / "acc", batch_size=4, accum_steps=4, mse=True, grad_clip=None)
    assert_same_weights(state(big), state(acc), atol=1e-5)


def test_max_steps_stops_early_and_evaluates(tmp_path):
    _, result = run_toy(tmp_path, epochs=5, max_steps=3)
    assert result.step == 3 and result.epoch == 0
    assert [e["step"] for e in result.evals] == [3]


def _linear_output_dtypes(out: Path, **overrides) -> tuple[set, object]:
    """Run the toy job, recording (grad enabled, dtype) of every nn.Linear output it computes."""
    seen: set = set()

    def hook(module, args, output):
        if isinstance(module, nn.Linear):
            seen.add((torch.is_grad_enabled(), output.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        _, result = run_toy(out, **overrides)
    finally:
        handle.remove()
    return seen, result


def test_bf16_autocast_runs_on_cpu(tmp_path):
    """With amp="bf16" the forward passes of training and evaluation compute in bfloat16 (the same
    hook sees float32 when amp is off), and the loss stays finite."""
    seen, result = _linear_output_dtypes(tmp_path / "bf16", epochs=1, amp="bf16")
    assert seen == {(True, torch.bfloat16), (False, torch.bfloat16)}     # training steps, then evaluation
    assert math.isfinite(result.last["loss"])
    seen_fp32, _ = _linear_output_dtypes(tmp_path / "fp32", epochs=1, amp=None)
    assert seen_fp32 == {(True, torch.float32), (False, torch.float32)}


def test_fp16_uses_a_grad_scaler_and_checkpoints_it(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # the scaler skipping its first steps makes torch warn
        _, result = run_toy(tmp_path, epochs=2, amp="fp16")
    scaler = torch.load(checkpoint_path(tmp_path), weights_only=False)["scaler"]
    assert scaler and 0 < scaler["scale"] <= 65536.0
    assert math.isfinite(result.last["loss"])


def _job(out: Path, resume: bool) -> list[str]:
    return [sys.executable, __file__, str(out), "resume" if resume else "fresh"]


def test_kill_9_mid_epoch_then_resume_ends_like_uninterrupted_run(tmp_path):
    # Uninterrupted reference, in a subprocess like the others (same code path, same threads).
    ref = tmp_path / "ref"
    subprocess.run(_job(ref, False), check=True, timeout=120)
    # The same run, killed with SIGKILL after its second checkpoint (mid-epoch), then resumed.
    run = tmp_path / "run"
    proc = subprocess.Popen(_job(run, False))
    ckpt = checkpoint_path(run)
    deadline = time.time() + 60
    while time.time() < deadline:
        if ckpt.exists():
            try:
                saved = torch.load(ckpt, weights_only=False)
            except Exception:       # replaced between exists() and load(): try again
                continue
            if saved["step"] >= 10:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(ckpt, weights_only=False)
    assert 0 < saved["step_in_epoch"] < 32 and saved["step"] < 64, "the kill must land mid-run"
    subprocess.run(_job(run, True), check=True, timeout=120)
    a, b = torch.load(checkpoint_path(ref), weights_only=False), torch.load(ckpt, weights_only=False)
    assert a["step"] == b["step"] == 64
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    # The metric log of the resumed run has each step once and matches the reference.
    log = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    ra, rb = log(ref), log(run)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        if x["kind"] == "train":
            assert abs(x["loss"] - y["loss"]) < 1e-5
        else:
            assert x["noise_probe"] == y["noise_probe"]


if __name__ == "__main__":   # the toy job the kill -9 test runs: 2 epochs x 32 steps, noise + dropout
    out, mode = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    run_toy(out, n=256, epochs=2, batch_size=8, noise=0.05, dropout=0.1, ckpt_every=5,
            sleep=0.02, resume=mode == "resume")


def test_param_groups_scale_the_lr_of_named_parts():
    from torch import nn

    from dashclip.optim import param_groups

    model = nn.ModuleDict({"text_tower": nn.Linear(3, 3), "head": nn.Linear(3, 2)})
    plain = param_groups(model, 0.05)
    assert [len(g["params"]) for g in plain] == [2, 2] and "lr" not in plain[0]
    groups = param_groups(model, 0.05, lr=1e-3, lr_scales={"text_tower.": 0.1})
    assert len(groups) == 4
    text = [g for g in groups if g.get("lr") == pytest.approx(1e-4)]
    assert {id(p) for g in text for p in g["params"]} == {id(p) for p in model["text_tower"].parameters()}
    assert {g["weight_decay"] for g in text} == {0.05, 0.0}   # weight decay still skips biases
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [pytest.approx(1e-4), 1e-3]


def test_adamw_uses_the_fused_kernel_on_cpu_and_makes_the_same_update():
    from dashclip.optim import adamw, param_groups

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    twin = nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    twin.load_state_dict(model.state_dict())
    start = model[0].weight.detach().clone()
    options = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    fused = adamw(param_groups(model, 0.1), "cpu", **options)
    plain = torch.optim.AdamW(param_groups(twin, 0.1), **options)
    assert fused.param_groups[0]["fused"] is True
    x = torch.randn(16, 6)
    for _ in range(10):
        for net, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert (model[0].weight - start).abs().max() > 1e-3     # it did train


def test_pick_device_gives_a_bare_cuda_its_rank_index():
    """`--device cuda` must name one GPU: torch.cuda.set_device raises on a cuda device without an index
    (seen on an H200 machine on 2026-12-04), so a bare "cuda" becomes this rank's GPU."""
    from dashclip.training.loop import pick_device

    assert pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("cuda", local_rank=3) == torch.device("cuda", 3)
    assert pick_device("cuda:1", local_rank=3) == torch.device("cuda", 1)
    assert pick_device("cpu", local_rank=3) == torch.device("cpu")


def test_loader_workers_train_the_same_run(tmp_path):
    """Batches made ahead in threads are the batches the loop would make itself, in the same order: the
    same weights, across epochs, gradient accumulation and a stop in the middle of an epoch."""
    base, a = run_toy(tmp_path / "inline", epochs=3, accum_steps=2, max_steps=9, log_every=100)
    threaded, b = run_toy(tmp_path / "threads", epochs=3, accum_steps=2, max_steps=9, log_every=100,
                          loader_workers=3)
    assert a.step == b.step == 9
    assert_same_weights(state(base), state(threaded), atol=0)
    with pytest.raises(ValueError, match="loader_workers"):
        LoopConfig(loader_workers=-1)


def test_read_ahead_keeps_order_and_stops_early():
    import threading

    from dashclip.data.images import read_ahead

    seen, lock = [], threading.Lock()

    def load(i):
        with lock:
            seen.append(i)
        return i * i

    assert list(read_ahead(load, range(20), workers=4)) == [i * i for i in range(20)]
    assert list(read_ahead(load, [], workers=4)) == []
    seen.clear()
    stream = read_ahead(load, range(1000), workers=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 4]
    stream.close()                     # the caller stops: nothing past the few in flight is loaded
    assert len(seen) <= 3 + 2
