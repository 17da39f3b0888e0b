"""CLI for Stage 1 (pretrain, embed-catalog) and Stage 2 (align)."""
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain(
        catalog: Path = typer.Option(..., "--catalog", help="Catalog dir (`dashclip catalog import` output)."),
        config: str = typer.Option("default", "--config", help="Model config name (default, tiny, ...) "
                                   "or a config JSON file."),
        out: Path = typer.Option(Path("runs/pretrain"), "--out", help="Run dir: checkpoints, metrics.jsonl, "
                                 "pretrain_config.json and model/ (load with dashclip.load)."),
        epochs: int = typer.Option(3),
        batch_size: int = typer.Option(64, help="Pairs per batch (per rank under torchrun)."),
        lr: float = typer.Option(1e-4),
        accum_steps: int = typer.Option(1, help="Gradient accumulation steps per optimizer step."),
        freeze_image: bool = typer.Option(False, "--freeze-image", help="Freeze the image tower and cache "
                                          "its features once (LiT; the practical mode on a CPU)."),
        image_size: Optional[int] = typer.Option(None, help="Image resolution (default: the config's)."),
        amp: Optional[str] = typer.Option(
            "auto", help="Mixed precision: bf16, fp16, none, or auto (bf16 where the GPU or CPU computes it natively)."),
        ckpt_every: int = typer.Option(200, help="Optimizer steps between checkpoints (also at each "
                                       "epoch end and at the end)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
        itc_weight: float = typer.Option(1.0, help="Weight of the image-text contrastive loss."),
        itm_weight: float = typer.Option(1.0, help="Weight of the image-text matching loss (0: off)."),
        product_weight: float = typer.Option(1.0, help="Weight of the product-embedding contrastive loss "
                                             "(0: off)."),
        product_against: str = typer.Option("text", help="What the product embedding is contrasted with: text, "
                                            "image or image+text (see PretrainConfig.product_against)."),
        image_product_weight: float = typer.Option(0.0, help="Weight of the image -> product term for search by "
                                                   "photo: photos against the indexed product embeddings, "
                                                   "held fixed (0: off; see PretrainConfig)."),
        heldout_frac: float = typer.Option(0.1, help="Share of products held out for evaluation (by id)."),
        max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
        seed: int = typer.Option(0),
        warmup_steps: int = typer.Option(50),
        cache_dir: Optional[Path] = typer.Option(None, help="Where image-feature caches live "
                                                 "(default: runs/cache/image-features)."),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if available)."),
        loader_workers: Optional[int] = typer.Option(
            None, help="Threads that decode the next batches' images while the model trains (default: up to "
            "8 on a GPU when images are decoded, else 0)."),
        tensorboard: bool = typer.Option(False, help="Also log to OUT/tensorboard (needs tensorboard)."),
        progress: bool = typer.Option(True, help="Show progress bars."),
    ):
        """Stage 1: continual catalog pretraining of the product encoder (ITC + ITM).
        Multi-GPU: torchrun --nproc_per_node N -m dashclip.cli pretrain ..."""
        from ..clihelp import console, user_errors
        from .loop import finish_distributed
        from .pretrain import PretrainConfig, pretrain as run_pretrain

        with user_errors():
            cfg = PretrainConfig(
                config=config, epochs=epochs, batch_size=batch_size, lr=lr, accum_steps=accum_steps,
                freeze_image=freeze_image, image_size=image_size,
                amp=None if amp in (None, "none") else amp, ckpt_every=ckpt_every, resume=resume,
                itc_weight=itc_weight, itm_weight=itm_weight, product_weight=product_weight,
                product_against=product_against, image_product_weight=image_product_weight,
                heldout_frac=heldout_frac,
                max_steps=max_steps, seed=seed, warmup_steps=warmup_steps,
                cache_dir=str(cache_dir) if cache_dir else None, device=device, loader_workers=loader_workers,
                tensorboard=tensorboard, progress=progress)
            result = run_pretrain(catalog, out, cfg)
            finish_distributed()
        if result.train.evals:
            last = result.train.evals[-1]
            console.print("held-out: " + "  ".join(f"{k} {last[k]:.3f}" for k in
                                                  ("t2i_r@1", "t2i_r@10", "i2t_r@10", "loss") if k in last))
        console.print(f"pretrained: {result.train.step} steps, {result.train.examples} pairs in "
                      f"{result.train.seconds:.0f}s; model in {out / 'model'}")

    @app.command("embed-catalog")
    def embed_catalog(
        model: Path = typer.Option(..., "--model", help="Model dir (`dashclip pretrain` or `align` output)."),
        catalog: Path = typer.Option(..., "--catalog", help="Catalog dir (`dashclip catalog import` output)."),
        out: Path = typer.Option(..., "--out", help="Embeddings dir: ids.parquet, fused/image/text.npy, meta.json."),
        batch_size: int = typer.Option(64, help="Products per forward pass."),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if available)."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
        image_cache: Optional[Path] = typer.Option(None, help="Where `pretrain --freeze-image` kept its "
                                                   "image-feature caches (default: runs/cache/image-features); "
                                                   "one made for this model's image tower is read instead "
                                                   "of running the tower."),
        backend: str = typer.Option("auto", "--backend", help="Model runtime: torch, onnx (an export: "
                                    "`dashclip export onnx`; CPU) or auto (onnx when --model is an export)."),
        ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Embed on Ray Data: 'local' "
                                          "starts Ray on this machine, 'auto' joins the cluster `ray start "
                                          "--head` runs here, or a cluster address (host:port, ray://...). "
                                          "The same chunk files and result as without it."),
        ray_workers: int = typer.Option(2, "--ray-workers", min=1, help="Ray actors, each loading the model once."),
        ray_threads: int = typer.Option(1, "--ray-threads", min=1, help="CPU threads (and Ray CPUs) per actor."),
    ):
        """Write product embeddings (fused = the product embedding, image-only, text-only) for a whole
        catalog. Resumable: re-run after a crash and finished chunks are kept (with or without --ray)."""
        import torch

        from ..clihelp import console, user_errors
        from ..models.embeddings import embed_catalog as run
        from ..models.embeddings import load_embeddings

        with user_errors():
            from ..models.runtime import load_model, resolve_backend

            onnx = resolve_backend(model, backend) == "onnx"
            dev = device or ("cpu" if onnx or not torch.cuda.is_available() else "cuda")
            m = load_model(model, backend, device=dev)
            on_ray = None
            if ray is not None:
                from ..models.embeddings import RayEmbedding

                on_ray = RayEmbedding(str(model), backend, ray_workers, None if ray == "local" else ray,
                                      ray_threads)
            path = run(m, catalog, out, batch_size=batch_size, progress=progress,
                       image_cache_root=image_cache, ray=on_ray)
            e = load_embeddings(path)
        console.print(f"embedded {len(e)} products ({e.meta['n_without_image']} without a readable image) "
                      f"in {e.meta['seconds']:.0f}s -> {path}")

    @app.command("align")
    def align(
        model: Path = typer.Option(..., "--model", help="Stage 1 model dir (`dashclip pretrain` output)."),
        grades: list[Path] = typer.Option(..., "--grades", help="Grade Parquet file or dir of shards; repeat "
                                          "for seed grades and model grades."),
        embeddings: Path = typer.Option(..., "--embeddings", help="Product embeddings of this model "
                                        "(`dashclip embed-catalog` output); the product side is frozen."),
        out: Path = typer.Option(Path("runs/align"), "--out", help="Work dir: checkpoints, metrics.jsonl, "
                                 "align.json and model/ (both encoders; load with dashclip.load)."),
        exclude_queries: Optional[Path] = typer.Option(None, "--exclude-queries", help="JSONL of queries "
                                                       "never to train on (e.g. held-out evaluation queries)."),
        variant: str = typer.Option("qcc", help="QCC variant: qcc (default), symmetric or graded."),
        grade1_weight: Optional[float] = typer.Option(None, help="Weight of grade-1 positives "
                                                      "(default: 0 = masked; 1/3 for --variant graded)."),
        temperature: float = typer.Option(0.05, help="Softmax temperature (initial value if learnable)."),
        learnable_temperature: bool = typer.Option(False, help="Learn the temperature."),
        min_confidence: float = typer.Option(0.5, help="Drop model grades below this confidence."),
        positives_per_product: int = typer.Option(1, help="Relevant queries sampled per product."),
        graded_negatives: int = typer.Option(1, help="Graded-0 queries sampled per product."),
        hard_negatives: int = typer.Option(1, help="Mined hard-negative queries per product."),
        pairs_per_query: int = typer.Option(32, help="Positive pairs per query per epoch."),
        unfreeze_product: bool = typer.Option(False, "--unfreeze-product", help="Also train the fusion layers "
                                              "and projections (the product embeddings are then recomputed)."),
        wise_alpha: float = typer.Option(0.75, help="Save start + alpha * (trained - start) as the query encoder "
                                         "(WiSE-FT weight averaging; 1.0: the trained weights)."),
        l2sp_weight: float = typer.Option(0.0, "--l2sp-weight", min=0.0, help="L2-SP: weight of sum "
                                          "||theta - theta_start||^2 over the trained query-encoder weights (0: off)."),
        freeze_query_layers: int = typer.Option(0, "--freeze-query-layers", min=0, help="Keep the query tower's "
                                                "token embeddings (1) and its lowest layers (2, 3, ...) as they start."),
        distill_weight: float = typer.Option(0.0, "--distill-weight", min=0.0, help="Similarity distillation: keep "
                                             "the similarities among each batch's queries and English words as the "
                                             "starting encoder had them, at this weight (0: off)."),
        distill_words: int = typer.Option(128, "--distill-words", min=0, help="English words (the tokenizer's) "
                                          "drawn per step for the similarity distillation."),
        max_length: int = typer.Option(32, help="Query tokens."),
        spelling: bool = typer.Option(True, help="Save a query spelling corrector with the model (catalog and "
                                      "training-query words; 'jaket' is searched as 'jacket')."),
        epochs: int = typer.Option(3),
        max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
        batch_size: int = typer.Option(64, help="Products per batch (per rank under torchrun)."),
        accum_steps: int = typer.Option(1, help="Gradient accumulation steps."),
        lr: float = typer.Option(1.5e-4),
        warmup_steps: int = typer.Option(20),
        amp: Optional[str] = typer.Option(
            "auto", help="Mixed precision: bf16, fp16, none, or auto (bf16 where the GPU or CPU computes it natively)."),
        ckpt_every: int = typer.Option(100, help="Optimizer steps between checkpoints."),
        resume: bool = typer.Option(False, "--resume", help="Continue from out/checkpoints/last.pt."),
        seed: int = typer.Option(0),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if available)."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ):
        """Stage 2: train the query encoder with the QCC loss (multi-GPU: torchrun ... -m dashclip.cli align)."""
        from ..clihelp import console, user_errors
        from ..io import read_jsonl
        from .align import AlignConfig, align as run_align
        from .loop import LoopConfig, finish_distributed

        with user_errors():
            excluded = set()
            if exclude_queries is not None:
                for i, row in enumerate(read_jsonl(exclude_queries), 1):
                    if not isinstance(row, dict) or not str(row.get("query") or "").strip():
                        raise ValueError(f"{exclude_queries}: line {i}: no 'query' field")
                    excluded.add(row["query"])
            config = AlignConfig(
                positives_per_product=positives_per_product,
                graded_negatives=graded_negatives, hard_negatives=hard_negatives, variant=variant,
                grade1_weight=grade1_weight, temperature=temperature,
                learnable_temperature=learnable_temperature, min_confidence=min_confidence,
                max_length=max_length, pairs_per_query=pairs_per_query, unfreeze_product=unfreeze_product,
                wise_alpha=wise_alpha, spelling=spelling, seed=seed, l2sp_weight=l2sp_weight,
                freeze_query_layers=freeze_query_layers, distill_weight=distill_weight, distill_words=distill_words)
            loop = LoopConfig(epochs=epochs, batch_size=batch_size, accum_steps=accum_steps, lr=lr,
                              warmup_steps=warmup_steps, amp=None if amp in (None, "none") else amp,
                              ckpt_every=ckpt_every, max_steps=max_steps, seed=seed, resume=resume,
                              progress=progress, device=device)
            summary = run_align(model, list(grades), out, config, loop,
                                embeddings_dir=embeddings, exclude_queries=excluded)
            finish_distributed()
        console.print(f"aligned: {summary['steps']} steps, last loss {summary['last'].get('loss', float('nan')):.4f}; "
                      f"model with query encoder in {out / 'model'}")

    @app.command("align-photos")
    def align_photos(
        model: Path = typer.Option(..., "--model", help="Model dir (`dashclip pretrain` or `align` output)."),
        catalog: Path = typer.Option(..., "--catalog", help="Catalog dir whose images train the photo head."),
        embeddings: Path = typer.Option(..., "--embeddings", help="Product embeddings of this model "
                                        "(`dashclip embed-catalog`): what a photo is aligned to."),
        out: Path = typer.Option(Path("runs/align-photos"), "--out", help="Work dir: checkpoints, metrics.jsonl, "
                                 "photo_align.json and model/ (the model with its photo head)."),
        epochs: int = typer.Option(10),
        batch_size: int = typer.Option(256, help="Photos per step."),
        lr: float = typer.Option(1e-3),
        hidden: int = typer.Option(1024, help="Width of the photo head's MLP."),
        regression_weight: float = typer.Option(10.0, help="Weight of the cosine term pulling a photo onto its "
                                                "product's embedding, beside the contrastive loss (0: "
                                                "contrastive only): photos land among products like theirs."),
        image_size: Optional[int] = typer.Option(None, help="Read photos at this side in pixels (default: the "
                                                 "model's image size). Shoppers' photos are larger than catalog "
                                                 "thumbnails; the product side does not change."),
        tower_lr: float = typer.Option(3e-4, help="Above 0: the photo side also gets its own copy of the image "
                                       "tower's last stage, trained at this lr with the head, on cached inputs of "
                                       "that stage. 0: the head alone on the shared tower's features (about 5x "
                                       "faster on a CPU; measured at --epochs 24 --batch-size 512)."),
        heldout_frac: float = typer.Option(0.1, help="Share of products never trained on (use Stage 1's)."),
        train_split: list[str] = typer.Option(["train"], "--train-split", help="Extra photos of this split "
                                              "train (repeatable); images without a split always do."),
        eval_split: Optional[str] = typer.Option("val", help="Extra photos of this split are evaluated each epoch."),
        cache_dir: Optional[Path] = typer.Option(None, help="Where image-tower features are cached (default "
                                                 "OUT/cache; give Stage 1's to reuse its features)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
        seed: int = typer.Option(0),
        device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 (default: cuda if available)."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ):
        """Photo alignment: train a photo-query head so a shopper's photo lands next to its product's
        embedding (search by photo). The product side and the index stay as they are."""
        from ..clihelp import console, user_errors
        from ..data.catalog import Catalog
        from .photo_align import PhotoAlignConfig, align_photos as run

        with user_errors():
            cfg = PhotoAlignConfig(epochs=epochs, batch_size=batch_size, lr=lr, hidden=hidden, image_size=image_size,
                                   regression_weight=regression_weight, tower_lr=tower_lr,
                                   heldout_frac=heldout_frac, seed=seed, train_splits=tuple(train_split),
                                   eval_split=eval_split or None)
            summary = run(model, Catalog.open(catalog), embeddings, out, cfg,
                          cfg.loop(resume=resume, progress=progress, device=device), cache_dir=cache_dir)
        if summary["unreadable_or_not_embedded"]:
            console.print(f"left out: {summary['unreadable_or_not_embedded']} images unreadable or of products "
                          "without an embedding; first: " + "; ".join(summary["first_unreadable"]))
        last = summary["evals"][-1] if summary["evals"] else {}
        console.print("photo -> own product, before / after: " + "  ".join(
            f"{k} {summary['start'].get(k, float('nan')):.3f} / {last[k]:.3f}" for k in last
            if k.endswith(("recall@1", "recall@10"))))
        if summary.get("tower_top_skipped"):
            console.print(f"--tower-lr: {summary['tower_top_skipped']}")
        console.print(f"aligned photos: {summary['train_photos']} photos, {summary['steps']} steps in "
                      f"{summary['seconds']:.0f}s; model with photo head in {out / 'model'}")


def _todo(name, issue):
    typer.echo(f"`dashclip {name}` is not built yet (issue #{issue}).", err=True)
    return 3
