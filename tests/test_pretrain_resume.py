"""`dashclip pretrain --resume` after a real kill -9 mid-epoch ends where the uninterrupted run
ends (tiny config, frozen cached image tower, ITC + ITM with their random hard negatives and
dropout). Run as a script, this file is the pretrain job the test kills; it slows each step down
a little so the kill can land mid-epoch."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _job(catalog: Path, out: Path, cache: Path, resume: bool) -> list[str]:
    return [sys.executable, __file__, str(catalog), str(out), str(cache), "resume" if resume else "fresh"]


def test_kill_9_then_resume_matches_uninterrupted_pretrain(tmp_path):
    sys.path.insert(0, str(HERE))
    from test_pretrain import make_catalog
    from test_training_loop import assert_same_weights

    from dashclip.training.loop import checkpoint_path

    catalog = make_catalog(tmp_path / "catalog")
    cache = tmp_path / "cache"
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_job(catalog, ref, cache, False), check=True, timeout=120)
    proc = subprocess.Popen(_job(catalog, run, cache, False))
    ckpt = checkpoint_path(run)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        try:
            if torch.load(ckpt, weights_only=False)["step"] >= 7:
                break
        except Exception:       # not there yet, or replaced while reading
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = torch.load(ckpt, weights_only=False)
    assert 0 < saved["step_in_epoch"] and saved["step"] < 27, "the kill must land mid-epoch"
    subprocess.run(_job(catalog, run, cache, True), check=True, timeout=120)
    a, b = torch.load(checkpoint_path(ref), weights_only=False), torch.load(ckpt, weights_only=False)
    assert a["step"] == b["step"] == 27
    assert_same_weights(a["model"], b["model"], atol=1e-5)
    evals = lambda d: [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
                       if r["kind"] == "eval"]
    ea, eb = evals(ref), evals(run)
    assert len(ea) == len(eb) == 3
    for x, y in zip(ea, eb):
        assert abs(x["loss"] - y["loss"]) < 1e-4 and x["t2i_r@10"] == y["t2i_r@10"]
    assert (run / "model" / "config.json").exists()


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from test_pretrain import tiny_config

    from dashclip.training.pretrain import PretrainTask, pretrain

    catalog, out, cache, mode = sys.argv[1:5]
    torch.set_num_threads(1)
    loss = PretrainTask.loss

    def slow_loss(self, model, batch, gather=True):
        time.sleep(0.03)
        return loss(self, model, batch, gather)

    PretrainTask.loss = slow_loss
    # 36 training pairs / batch 4 = 9 steps per epoch, 3 epochs, a checkpoint every 2 steps.
    pretrain(catalog, out, tiny_config(epochs=3, batch_size=4, freeze_image=True, cache_dir=cache,
                                       ckpt_every=2, resume=mode == "resume"))
