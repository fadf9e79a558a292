"""`pipeline <command>`: argument parsing and dispatch only. Config and paths are checked before any Ray work.

    pipeline run [--config FILE] [--set KEY=VALUE ...]
    pipeline train --config FILE [--set ...]
    pipeline tune --config FILE [--set ...]
    pipeline cca --config FILE [--set ...] [--out DIR]
    pipeline embeddings --config FILE --out FILE.txt [--dim 128] [--window 4] [--set ...]
    pipeline index --checkpoint DIR --data PATH --out DIR
    pipeline evaluate --checkpoint DIR --data PATH --out DIR
    pipeline search --index DIR (--text STR | --image FILE) [--k 10]
    pipeline data synth --out DIR [--train N] [--val N] [--seed S]
    pipeline data convert-karpathy --json FILE --images DIR --out DIR [--split test] [--format webdataset]
    pipeline data inspect PATH
    pipeline keys [run|train|evaluate]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pipeline import storage
from pipeline.config import (ConfigError, EvalJobConfig, RunJobConfig, TrainJobConfig, describe_keys,
                             load_config, narrow)

JOB_CONFIGS = {"run": RunJobConfig, "train": TrainJobConfig, "evaluate": EvalJobConfig}


def default_config() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "configs" / "demo.yaml").is_file():
            return base / "configs" / "demo.yaml"
    raise ConfigError("configs/demo.yaml not found; pass --config FILE")


def _config_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--config", required=required, help="YAML recipe (see configs/)" +
                   ("" if required else "; default configs/demo.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key, e.g. --set train.epochs=3 (repeatable); "
                        "`pipeline keys` lists them")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipeline", description="Two-tower image-text retrieval on Ray: "
                                 "Ray Data ingest, Ray Train contrastive training, FAISS retrieval, reports.")
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="show Ray's and FAISS's own output on the console "
                        "too (by default it goes to the log file the summary names)")
    command = lambda name, **kw: sub.add_parser(name, parents=[common], **kw)  # noqa: E731
    p = command("run", help="data -> train -> index -> evaluate -> report, end to end")
    _config_args(p, required=False)
    p = command("train", help="train a two-tower model; prints the run directory and checkpoint")
    _config_args(p, required=True)
    p = command("tune", help="sweep tune.space with Ray Tune; prints the results table, the best config "
                       "and checkpoint")
    _config_args(p, required=True)
    for name in ("baseline", "cca"):
        p = command(name, help="fit a baseline on data.train, score data.val: linear or kernel CCA, or the bimodal "
                               "autoencoder (cca.kind, or --kind; `cca` is the older name); writes the same "
                               "report as a trained run")
        _config_args(p, required=True)
        p.add_argument("--kind", default=None, choices=["linear", "kernel", "autoencoder"], help="sets cca.kind")
        p.add_argument("--out", default=None, help="output folder (default <run dir>/baselines/linear_cca, "
                       "kernel_cca or autoencoder)")
    p = command("embeddings", help="word vectors from the training captions' co-occurrences (PPMI + SVD, GloVe "
                       "or skip-gram), written in GloVe text format for model.text.embeddings.path")
    _config_args(p, required=True)
    p.add_argument("--out", required=True, help="GloVe text file to write (local or s3://)")
    p.add_argument("--dim", type=int, default=None, help="vector size (embeddings.dim, default 128)")
    p.add_argument("--window", type=int, default=None, help="co-occurrence window in words (embeddings.window, "
                   "default 4)")
    p.add_argument("--method", default=None, choices=["ppmi", "glove", "sgns"], help="embeddings.method "
                   "(default ppmi)")
    for name, helptext in (("index", "embed a gallery and build a FAISS index"),
                           ("evaluate", "retrieval evaluation of a checkpoint; writes the report"),
                           ("rerank", "train the fusion re-ranker (rerank.*) on a trained checkpoint's embeddings of "
                                      "--data, its towers frozen; `evaluate --rerank` uses it")):
        p = command(name, help=helptext)
        if name == "evaluate":
            p.add_argument("--checkpoint", required=True, action="append",
                           help="checkpoint dir, or a run dir (its newest checkpoint); repeat it to compare several "
                                "checkpoints on the same gallery (the report gains a comparison table)")
            p.add_argument("--rerank", default=None, help="a `pipeline rerank` output folder: the report adds R@K "
                           "with each query's top rerank.k re-scored by it (one --checkpoint: the one it was "
                           "trained on)")
        else:
            p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a run dir (its newest checkpoint)")
        p.add_argument("--data", required=True, help="training shards of the re-ranker" if name == "rerank" else
                       "eval shards: path, folder, glob or brace list")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override eval.* / index.* / scaling.* / rerank.* keys (`pipeline keys evaluate`)")
        p.add_argument("--address", default=None, help="Ray cluster address")
    p = command("import-model", help="write a checkpoint from pretrained weights (OpenCLIP, or a timm image and a "
                "Hugging Face text tower) that evaluate, index, search and model.init_from accept")
    p.add_argument("--from", dest="source", default="", help="open_clip:<model name or model-config .json>")
    p.add_argument("--weights", default="", help="with --from: the model's local weights file (.safetensors, "
                   ".bin, .pth); empty: random init")
    p.add_argument("--tag", default="", help="with --from: the pretrained tag the weights are (its preprocessing), "
                   "e.g. webli for SigLIP")
    p.add_argument("--tokenizer", default="", help="with --from: local folder of a hub tokenizer (SigLIP models)")
    p.add_argument("--image", default="", help="image tower: timm:<name> or resnet18/resnet50/vit_b_16/convnext_tiny")
    p.add_argument("--image-weights", default="", help="the image tower's local weights file")
    p.add_argument("--text", default="", help="text tower: hf:<local Hugging Face folder>")
    p.add_argument("--pooling", default=None, choices=["mean", "cls"], help="hf: pooling (default: the folder's "
                   "sentence-transformers pooling, else mean)")
    p.add_argument("--embed-dim", type=int, default=256, help="joint space of a timm/hf pair (default 256); its "
                   "projections start random, so the pair scores near chance until trained")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p = command("search", help="query a built index with a caption or an image")
    p.add_argument("--index", required=True, help="index folder written by `pipeline index` or `pipeline run`")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="caption query: returns the nearest images")
    q.add_argument("--image", help="image file query: returns the nearest captions")
    p.add_argument("--k", type=int, default=10, help="results to return (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint when the index is on s3://")
    p.add_argument("--distributed", action="store_true", help="sharded index: hold each shard in its own Ray actor "
                   "(for galleries too large for this machine) instead of loading all shards here")
    p.add_argument("--address", default=None, help="Ray cluster address (with --distributed)")
    p.add_argument("--rerank", default=None, help="a `pipeline rerank` output folder trained on the index's "
                   "checkpoint: the top --rerank-k hits are re-ordered by it")
    p.add_argument("--rerank-k", type=int, default=20, help="hits re-scored with --rerank (default 20)")
    data = command("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    data_command = lambda name, **kw: data.add_parser(name, parents=[common], **kw)  # noqa: E731
    p = data_command("synth", help="write the synthetic compositional-scenes dataset (WebDataset shards)")
    p.add_argument("--out", required=True, help="output folder; train/ and val/ are created in it")
    p.add_argument("--train", type=int, default=8000, help="training images (default 8000)")
    p.add_argument("--val", type=int, default=500, help="validation images (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p = data_command("convert-karpathy", help="convert a Karpathy split (Flickr8k/30k, COCO) into shards, "
                        "one sample per image with all its captions")
    p.add_argument("--json", required=True, help="Karpathy split file, e.g. dataset_flickr30k.json")
    p.add_argument("--images", required=True, help="image folder (COCO: the folder holding train2014/, val2014/)")
    p.add_argument("--out", required=True, help="output folder for the shards")
    p.add_argument("--split", default="test", help="split(s) to convert, comma-separated: train, restval, val, "
                   "test (default test)")
    p.add_argument("--format", default="webdataset", choices=["webdataset", "parquet"], help="shard format")
    p.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    p = data_command("inspect", help="count samples, show the schema, caption lengths, unreadable samples")
    p.add_argument("path", help="shards: path, folder, glob or brace list (.tar or .parquet, local or s3://)")
    p.add_argument("--show", type=int, default=20, help="unreadable samples listed by key (default 20)")
    p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint for s3:// paths")
    p.add_argument("--address", default=None, help="Ray cluster address")
    p = command("keys", help="list every config key with its default and meaning")
    p.add_argument("job", nargs="?", default="run", choices=sorted(JOB_CONFIGS))
    return ap


def _start_job(args, config: str | None = None, extra: tuple = (), check=None, **preflight
               ) -> tuple[RunJobConfig, str]:
    """Every training-side command's start: the recipe (`config`, default --config) with --set and `extra`
    overrides, the command's own `check`, the checks before any Ray work (`_preflight`, given `preflight`),
    then the cluster (or the embedded local Ray). -> (config, where: 'local' or the cluster's address)"""
    cfg = load_config(RunJobConfig, config or args.config, [*args.overrides, *extra])
    if check is not None:
        check(cfg)
    _preflight(cfg, **preflight)
    from pipeline import cluster  # after the checks: they must answer before torch and Ray are loaded

    return cfg, cluster.connect(args.address, args.command)


def _start_eval(args, checkpoints: list[str], check=None) -> tuple[EvalJobConfig, list[str], list[str]]:
    """`index`, `evaluate` and `rerank`: --set overrides, the S3 paths and --out checked, each checkpoint verified,
    the --data shards found and the command's own `check(config, checkpoints)` before any Ray work, then the
    cluster. -> (config, checkpoints, shard paths)"""
    cfg = load_config(EvalJobConfig, None, args.overrides)
    _preflight_eval(cfg, args.data, args.out, checkpoints)
    ckpts = [_require_checkpoint(c) for c in checkpoints]
    paths = _check_paths(args.data, "--data")
    if check is not None:
        check(cfg, ckpts)
    from pipeline import cluster

    cluster.connect(args.address, args.command)
    return cfg, ckpts, paths


def cmd_run(args) -> None:
    t0 = time.time()
    cfg, where = _start_job(args, args.config or default_config())
    from pipeline import end_to_end

    print(f"[run] {cfg.run.name}: {'embedded local Ray' if where == 'local' else 'Ray cluster'}, "
          f"{cfg.scaling.num_workers} workers, run directory {cfg.run.run_dir()}")
    summary = end_to_end.run(cfg)
    print(end_to_end.format_summary(summary))
    print(f"total time {time.time() - t0:.0f} s")


def cmd_train(args) -> None:
    # Recipes are shared with `pipeline run`: read the whole schema, keep the training sections.
    cfg, _ = _start_job(args)
    from pipeline import train

    res = train.run(narrow(cfg, TrainJobConfig))
    print(f"run directory: {res.run_dir}\ncheckpoint: {res.checkpoint}\nmetrics: {json.dumps(res.metrics)}")


def _check_space(cfg) -> None:
    if not (cfg.tune.space or cfg.tune.studies):
        raise ConfigError("nothing to sweep: set tune.space (e.g. --set 'tune.space={loss.temperature: "
                          "{grid: [0.05, 0.1]}}') or tune.studies in the recipe")


def cmd_tune(args) -> None:
    cfg, _ = _start_job(args, check=_check_space)
    from pipeline.tune import driver as tune

    res = tune.run(cfg)
    print(tune.format_summary(res, cfg.tune.metric))


def _check_cca_inputs(cfg) -> None:
    for key, path in (("cca.word_vectors", cfg.cca.word_vectors), ("cca.checkpoint", cfg.cca.checkpoint)):
        if path and not storage.is_remote(path) and not Path(path).exists():
            raise ConfigError(f"{key}={path!r} does not exist")


def cmd_cca(args) -> None:
    t0 = time.time()
    kind = (f"cca.kind={args.kind}",) if args.kind else ()
    cfg, _ = _start_job(args, extra=kind, check=_check_cca_inputs, writes=[(args.out, "--out")] if args.out else [])
    from pipeline.baselines import fitting as baselines
    from pipeline.report import recall_table

    rep, out = baselines.run(cfg, args.out)
    maps = "autoencoder.npz" if cfg.cca.kind == "autoencoder" else "cca.npz"
    print(f"{rep['checkpoint']}\n\n{recall_table(rep)}\n\nreport: {storage.join(out, 'report', 'report.html')} "
          f"(+ report.md, report.json); fitted maps: {storage.join(out, maps)}\n"
          f"total time {time.time() - t0:.0f} s")


def cmd_embeddings(args) -> None:
    flags = tuple(f"embeddings.{k}={v}" for k, v in (("dim", args.dim), ("window", args.window),
                                                       ("method", args.method)) if v is not None)
    out_dir = args.out.rsplit("/", 1)[0] if storage.is_remote(args.out) else str(Path(args.out).resolve().parent)
    cfg, _ = _start_job(args, extra=flags, splits=("train",), writes=[(out_dir, "--out")])
    from pipeline import word_embeddings

    print(word_embeddings.format_summary(word_embeddings.run(cfg.embeddings, cfg.data, args.out, cfg.train.seed,
                                                             cfg.scaling, cfg.run)))


def cmd_index(args) -> None:
    cfg, (ckpt,), paths = _start_eval(args, [args.checkpoint])
    from pipeline import checkpoint
    from pipeline.index.embedding_passes import embed_to_parquet
    from pipeline.index.sharded import build_gallery_indexes, write_index

    image_size = checkpoint.read_config(ckpt)["data"]["image_size"]
    emb = embed_to_parquet(ckpt, paths, image_size, args.out, cfg.scaling.num_workers, cfg.scaling.use_gpu,
                           cfg.eval.batch_size, in_driver_images=cfg.eval.in_driver_images)
    built = build_gallery_indexes(args.out, cfg.index.spec(), cfg.index.shard_rows)
    meta = write_index(args.out, built, ckpt, cfg.index.spec(), emb.n_images, emb.n_captions, emb.dim)
    shards = len(meta["indexes"]["images"].get("shards") or []) or 1
    print(f"index: {args.out} ({meta['n_images']} images, {meta['n_captions']} captions, {meta['type']}, "
          f"{shards} shard{'s' if shards > 1 else ''}, built in {meta['build_s']:.3f} s, recall@10 vs exact "
          f"{meta['recall@10_vs_exact']:.3f}, {meta['qps']:.0f} queries/s; embeddings in images.parquet/, "
          f"captions.parquet/)")


def cmd_evaluate(args) -> None:
    loaded = []

    def load_reranker(cfg, ckpts) -> None:  # refused before any Ray work when it belongs to another model
        if not args.rerank:
            return
        if len(ckpts) > 1:
            raise ConfigError("--rerank goes with one --checkpoint: the one the re-ranker was trained on")
        from pipeline.rerank.job import load

        try:
            loaded.append(load(args.rerank, ckpts[0]))
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"--rerank {args.rerank}: {e}") from None

    cfg, ckpts, _ = _start_eval(args, args.checkpoint, load_reranker)
    from pipeline import evaluate
    from pipeline.report import comparison_table, recall_table

    reranker = loaded[0] if loaded else None
    rep = evaluate.run(ckpts, args.data, args.out, cfg.eval, cfg.scaling, cfg.index, reranker=reranker,
                       rerank_k=cfg.rerank.k)
    table = comparison_table(rep["comparison"]) if rep.get("comparison") else recall_table(rep)
    print(table + f"\n\nreport: {storage.join(args.out, 'report.html')} (+ report.md, report.json); "
                  f"embeddings and index: {storage.join(args.out, 'index')}")


def cmd_rerank(args) -> None:
    cfg, (ckpt,), paths = _start_eval(args, [args.checkpoint])
    from pipeline.rerank.job import train

    meta = train(ckpt, paths, args.out, cfg)
    print(f"re-ranker: {args.out} ({meta['description']}, trained on {meta['trained_on']['captions']} captions and "
          f"{meta['trained_on']['images']} images with {meta['trained_on']['negatives']} hard negatives each, "
          f"loss {meta['loss']}, {meta['seconds']:.0f} s)\nuse it with `pipeline evaluate --checkpoint {ckpt} "
          f"--rerank {args.out} ...`")


def cmd_search(args) -> None:
    from pipeline.index.sharded import search

    if args.k < 1:
        raise ConfigError(f"--k {args.k}: ask for at least 1 result")
    image = _query_image(args.image) if args.image else None
    storage.configure(args.endpoint_url)
    reranker = None
    if args.rerank:
        from pipeline.rerank.job import load

        try:
            ckpt = json.loads(storage.read_text(storage.join(args.index, "meta.json")))["checkpoint"]
            reranker = load(args.rerank, ckpt)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"--rerank {args.rerank}: {e}") from None
    more = {"reranker": reranker, "rerank_k": args.rerank_k}
    if args.distributed:
        from pipeline import cluster

        cluster.connect(args.address, args.command)
        hits = search(args.index, text=args.text, image=image, k=args.k, distributed=True, **more)
    else:
        with storage.local_copy(args.index) as index_dir:  # an s3:// index is fetched first
            hits = search(index_dir, text=args.text, image=image, k=args.k, **more)
    if args.json:
        print(json.dumps(hits, indent=2))
        return
    for h in hits:
        what = h.get("key") or f"{h['caption']}  [{h['image']}]"
        head = f"  (re-ranked {h['rerank_score']:.3f})" if "rerank_score" in h else ""
        print(f"{h['rank']:>3}  {h['score']:.3f}{head}  {what}")


def _query_image(path: str):
    """The --image query decoded here, so a corrupt, truncated or oversized file is one line, not PIL's
    traceback from inside the search."""
    import warnings

    from PIL import Image

    if not Path(path).is_file():
        raise ConfigError(f"--image {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL only warns below 2x its limit
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ConfigError(f"--image {path}: the image claims more than {Image.MAX_IMAGE_PIXELS} pixels; "
                          "resize it before searching") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ConfigError(f"--image {path} cannot be read as an image ({e}); give a JPEG, PNG or WebP "
                          "file") from None


def cmd_data(args) -> None:
    if args.data_command == "synth":
        from pipeline.data.synthetic import write_dataset

        if args.train < 1 or args.val < 1:
            raise ConfigError("--train and --val must be positive")
        paths = write_dataset(args.out, args.train, args.val, args.seed)
        print(f"wrote {args.train} train samples in {len(paths['train'])} shards to {Path(args.out) / 'train'}\n"
              f"wrote {args.val} val samples in {len(paths['val'])} shards to {Path(args.out) / 'val'}")
        return
    if args.data_command == "convert-karpathy":
        from pipeline.data.karpathy import convert_karpathy, format_summary

        summary = convert_karpathy(args.json, args.images, args.out, tuple(s.strip() for s in args.split.split(",")),
                                   args.format, args.shard_size)
        print(format_summary(summary))
        return
    from pipeline import cluster
    from pipeline.data.ingest import resolve_shards
    from pipeline.data.inspect import inspect_shards

    storage.configure(args.endpoint_url)
    shards = resolve_shards(args.path, "PATH")
    cluster.connect(args.address, args.command)
    print(inspect_shards(shards, show=args.show))


def cmd_keys(args) -> None:
    rows = describe_keys(JOB_CONFIGS[args.job])
    width = max(len(k) for k, _, _ in rows)
    for key, help_text, default in rows:
        print(f"{key:<{width}}  {json.dumps(default):<14}  {help_text}")


def _preflight(cfg, splits=("train", "val"), writes=None) -> None:
    """What a training job checks before any Ray work, each failure one line: S3 reachable with the AWS chain's
    credentials for every s3:// path, the run directory (and `writes`) writable, synthetic data written only
    where the config points at the synthetic default, the shards there and non-empty."""
    from pipeline.data.synthetic import ensure_data

    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    specs = {f"data.{s}": getattr(cfg.data, s) for s in splits if s != "train" or not isinstance(cfg.data.train, list)}
    if "train" in splits and isinstance(cfg.data.train, list):  # each source checked under its own name
        specs = {f"data.train[{i}] ({s['name']})": s["path"] for i, s in enumerate(cfg.data.train)} | specs
    for key, spec in specs.items():
        for part in _remote_parts(spec):
            storage.check_access(part, key)
    for uri, key in [(cfg.run.storage_path, "run.storage_path"), *(writes or [])]:
        storage.check_access(uri, key, write=True)
    ensure_data(cfg.data)
    _check_paths(*[x for key, spec in specs.items() for x in (spec, key)])
    if hasattr(cfg, "model"):
        from pipeline.models.weights import WeightsError
        from pipeline.warm_start import check_model

        try:
            check_model(cfg)  # weights that do not fit, an image size a ViT cannot take: here, not in a worker
        except (WeightsError, ValueError) as e:
            raise ConfigError(str(e)) from None


def _preflight_eval(cfg, data: str, out: str, checkpoints: list[str]) -> None:
    """index / evaluate: the S3 paths reachable, the output folder writable, before any Ray work."""
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    for part in _remote_parts(data):
        storage.check_access(part, "--data")
    for c in checkpoints:
        if storage.is_remote(c):
            storage.check_access(c, "--checkpoint")
    storage.check_access(out, "--out", write=True)


def _remote_parts(spec: str) -> list[str]:
    from pipeline.data.ingest import split_specs

    return [p for p in split_specs(spec) if storage.is_remote(p)]


def _check_paths(*pairs: str) -> list[str]:
    """Each (spec, key) pair must match non-empty shards. -> the paths of the last pair."""
    from pipeline.data.ingest import check_shards, expand_paths

    out: list[str] = []
    for spec, key in zip(pairs[::2], pairs[1::2]):
        out = expand_paths(spec, key)
        check_shards(out, key)
    return out


def _require_checkpoint(path: str) -> str:
    from pipeline.checkpoint import check_loadable, find_latest

    ckpt = find_latest(path)
    if ckpt is None:
        raise ConfigError(f"--checkpoint {path}: no checkpoint there (expected model.pt, tokenizer.json, "
                          "config.json, state.json, or a run dir with checkpoints/epoch_*)")
    check_loadable(ckpt)  # every file's hash, and the weights fit: here, not inside an embedding actor
    return ckpt


def cmd_import_model(args) -> None:
    from pipeline.import_model import import_config

    kwargs = dict(source=args.source, weights=args.weights, tag=args.tag, tokenizer=args.tokenizer,
                  image=args.image, image_weights=args.image_weights, text=args.text, pooling=args.pooling,
                  embed_dim=args.embed_dim)
    try:
        import_config(**kwargs)  # the names and files, before any weights are read
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from pipeline.import_model import import_model

    done = import_model(args.out, **kwargs)
    print(done.summary)
    print(f"checkpoint: {done.path} (evaluate it with `pipeline evaluate --checkpoint {done.path} --data ...`, "
          f"fine-tune it with --set model.init_from={done.path})")


COMMANDS = {"run": cmd_run, "import-model": cmd_import_model, "train": cmd_train, "tune": cmd_tune, "cca": cmd_cca,
            "baseline": cmd_cca, "embeddings": cmd_embeddings, "rerank": cmd_rerank,
            "index": cmd_index, "evaluate": cmd_evaluate,
            "search": cmd_search, "data": cmd_data, "keys": cmd_keys}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        os.environ["PIPELINE_VERBOSE"] = "1"  # workers started from here inherit it
    from pipeline import console

    try:
        COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        if console.log_path():
            print(f"(what Ray printed is in {console.log_path()})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: `pipeline {args.command}` stopped. Training runs resume from their newest checkpoint "
              "when the same command is run again", file=sys.stderr)
        return 130
    if console.log_path():
        print(f"Ray's and FAISS's own messages: {console.log_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
