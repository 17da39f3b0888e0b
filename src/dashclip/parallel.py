"""Ray Data for the batch jobs (`embed-catalog --ray`, `labels grade --ray`): an actor pool over shards.

Both jobs already write their output as numbered shards that are the unit of resumption (embedding chunks,
grade shards). On Ray the unit of work is the same shard: the driver lists the shards not yet on disk as a
Ray dataset, `map_batches` hands them one at a time to a pool of actors, and each actor, which loaded the
model once in its constructor, computes a shard with the same function as the single-process path and
writes it atomically. So the files are the ones the single-process path writes, a rerun (either path)
skips finished shards, and a killed worker loses only its shard in progress. The actors read the catalog
(Parquet) and write the shards through the filesystem, so on a cluster the catalog, model and output
dirs must be on storage every node sees (NFS, a mounted bucket), as Ray's own Parquet readers expect.

Ray is an optional extra (`pip install 'dashclip[ray]'`); without `--ray` nothing here is imported.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

from .clihelp import UserError


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise UserError("--ray needs Ray Data: pip install 'dashclip[ray]' (or pip install 'ray[data]')") from e
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to the cluster at `address` ("auto": the one `ray start --head` started on this machine), or
    start a local Ray with `num_cpus` when there is none. Reuses a connection this process already has."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": num_cpus or os.cpu_count()}
        # Ray's own log lines would bury the job's progress bar; errors still raise here.
        ray.init(ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR",
                 include_dashboard=False, **kwargs)
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    return ray


class _ShardActor:
    """One actor of the pool: builds its worker once (the model loads here), then runs it per shard."""

    def __init__(self, make_worker: Callable[[], Callable[[int], dict]], threads: int):
        import torch

        torch.set_num_threads(max(1, threads))     # the actor's share of the node, not every core
        self.worker = make_worker()

    def __call__(self, batch: dict) -> dict:
        rows = [self.worker(int(s)) for s in batch["shard"]]
        return {k: [r[k] for r in rows] for k in rows[0]} if rows else {}


def map_shards(shards: Sequence[int], make_worker: Callable[[], Callable[[int], dict]], workers: int = 2,
               address: str | None = None, threads_per_worker: int = 1,
               on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `make_worker()(shard)` for every shard on a pool of `workers` Ray actors; each worker is built
    once per actor (a picklable callable: a module-level class or a functools.partial of one). Returns the
    workers' result dicts (each must hold "shard"), calling `on_result` as each arrives."""
    if not shards:
        return []
    if workers < 1:
        raise ValueError(f"--ray-workers must be >= 1, got {workers}")
    init_ray(address, num_cpus=max(workers * threads_per_worker, 1))
    import ray.data

    ds = ray.data.from_items([{"shard": int(s)} for s in shards], override_num_blocks=len(shards))
    out = ds.map_batches(_ShardActor, fn_constructor_args=(make_worker, threads_per_worker), batch_size=1,
                         concurrency=workers, num_cpus=threads_per_worker, batch_format="numpy")
    results = []
    for row in out.iter_rows():
        results.append(dict(row))
        if on_result is not None:
            on_result(results[-1])
    return results
