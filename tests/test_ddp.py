"""DDP on CPU: two processes on the gloo backend, launched with torchrun like a real multi-GPU job.

The toy job checks the gathering math: two ranks with batch b and the ITC loss gathered across them
must train exactly like one process with batch 2b (same examples per global batch, same global loss,
same gradient). Run as a script under torchrun, this file is that job."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def torchrun(*args: str, timeout: int = 120) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_ddp_two_ranks_match_one_process_with_double_batch(tmp_path):
    sys.path.insert(0, str(HERE))
    from test_training_loop import assert_same_weights, run_toy

    torchrun(__file__, str(tmp_path / "ddp"))
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    assert_same_weights(rank0, rank1, atol=0)            # DDP keeps the replicas identical
    single, _ = run_toy(tmp_path / "single", batch_size=8)
    assert_same_weights(rank0, single.state_dict(), atol=1e-5)
    assert not torch.allclose(rank0["image.weight"], _initial_toy()["image.weight"])   # it did train


def _initial_toy():
    from test_training_loop import ToyTwoTower

    torch.manual_seed(0)
    return ToyTwoTower().state_dict()


def _toy_rank(out: Path) -> None:
    import torch.distributed as dist

    from test_training_loop import run_toy

    from dashclip.training.loop import finish_distributed

    model, result = run_toy(out, batch_size=4)
    torch.save(model.state_dict(), out / f"rank{dist.get_rank()}.pt")
    finish_distributed()


def test_ddp_pretrain_tiny_ranks_end_identical(tmp_path):
    """Stage 1 on the tiny config under torchrun (2 CPU ranks, gloo): image tower trained too, so
    DDP must keep weights and BatchNorm statistics in step; both ranks end with identical weights."""
    sys.path.insert(0, str(HERE))
    from test_pretrain import make_catalog
    from test_training_loop import assert_same_weights

    catalog = make_catalog(tmp_path / "catalog")
    torchrun(__file__, "pretrain", str(catalog), str(tmp_path / "run"))
    rank0 = torch.load(tmp_path / "run" / "rank0.pt")
    rank1 = torch.load(tmp_path / "run" / "rank1.pt")
    assert_same_weights(rank0, rank1, atol=0)
    assert (tmp_path / "run" / "model").is_dir()
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum('"eval"' in r for r in rows) == 2


def _pretrain_rank(catalog: str, out: str) -> None:
    import torch.distributed as dist

    from test_pretrain import tiny_config

    from dashclip.training.loop import finish_distributed
    from dashclip.training.pretrain import pretrain

    result = pretrain(catalog, out, tiny_config(epochs=2, batch_size=4))
    torch.save(result.model.state_dict(), Path(out) / f"rank{dist.get_rank()}.pt")
    finish_distributed()


if __name__ == "__main__":      # one rank of a DDP job
    sys.path.insert(0, str(HERE))
    if sys.argv[1] == "pretrain":
        _pretrain_rank(sys.argv[2], sys.argv[3])
    else:
        _toy_rank(Path(sys.argv[1]))
