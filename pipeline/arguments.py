"""The command line's arguments: every `pipeline` command, its flags and their help (`--help` answers without
importing torch or Ray), and the default recipe."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import ConfigError, EvalJobConfig, RunJobConfig, TrainJobConfig

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
    _training_commands(command)
    _word_vector_command(command)
    _gallery_commands(command)
    _zeroshot_and_export_commands(command)
    _import_model_command(command)
    _search_command(command)
    _serve_command(command)
    _data_commands(command, common)
    p = command("keys", help="list every config key with its default and meaning")
    p.add_argument("job", nargs="?", default="run", choices=sorted(JOB_CONFIGS))
    return ap


def _training_commands(command) -> None:
    """run, train, tune and the baselines: a recipe and its overrides."""
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


def _word_vector_command(command) -> None:
    """`pipeline embeddings`: word vectors from the training captions."""
    p = command("embeddings", help="word vectors from the training captions' co-occurrences (PPMI + SVD, GloVe "
                       "or skip-gram), written in GloVe text format for model.text.embeddings.path")
    _config_args(p, required=True)
    p.add_argument("--out", required=True, help="GloVe text file to write (local or s3://)")
    p.add_argument("--dim", type=int, default=None, help="vector size (embeddings.dim, default 128)")
    p.add_argument("--window", type=int, default=None, help="co-occurrence window in words (embeddings.window, "
                   "default 4)")
    p.add_argument("--method", default=None, choices=["ppmi", "glove", "sgns"], help="embeddings.method "
                   "(default ppmi)")


def _gallery_commands(command) -> None:
    """index, evaluate and rerank: a checkpoint and the shards it embeds."""
    for name, helptext in (("index", "embed a gallery and build a FAISS index"),
                           ("evaluate", "retrieval evaluation of a checkpoint; writes the report"),
                           ("rerank", "train the fusion re-ranker (rerank.*) on a trained checkpoint's embeddings of "
                                      "--data, its towers frozen (to train it with the towers: rerank.enabled in "
                                      "`run`/`train`); `evaluate --rerank` uses it")):
        p = command(name, help=helptext)
        if name == "evaluate":
            p.add_argument("--checkpoint", required=True, action="append",
                           help="checkpoint dir, or a run dir (its newest checkpoint); repeat it to compare several "
                                "checkpoints on the same gallery (the report gains a comparison table)")
            p.add_argument("--rerank", default=None, help="a `pipeline rerank` output folder, or a checkpoint or "
                           "run dir trained with rerank.enabled: the report adds R@K with each query's top rerank.k "
                           "re-scored by it (one --checkpoint: the one it was trained on)")
        else:
            p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a run dir (its newest checkpoint)")
        p.add_argument("--data", required=True, help="training shards of the re-ranker" if name == "rerank" else
                       "eval shards: path, folder, glob or brace list")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override eval.* / index.* / scaling.* / rerank.* keys (`pipeline keys evaluate`)")
        p.add_argument("--address", default=None, help="Ray cluster address")


def _zeroshot_and_export_commands(command) -> None:
    """zeroshot (clip_benchmark's classification on an image folder) and export (embeddings for clip-retrieval)."""
    p = command("zeroshot", help="zero-shot classification of an ImageFolder-style dataset (one subfolder per "
                "class), as clip_benchmark scores it: top-1, top-5, mean per-class recall")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a run dir (its newest checkpoint)")
    p.add_argument("--data", required=True, help="image folder with one subfolder per class (local or s3://)")
    p.add_argument("--classes", default="", help="class names for the prompts: one per line in the folders' sorted "
                   "order, a JSON list, or a JSON {folder: name} map (default: the folder names)")
    p.add_argument("--templates", default="openai", help="openai (OpenAI's 80 ImageNet templates, the default), "
                   "simple ('a photo of a {c}.'), or a file with one template per line holding {c}")
    p.add_argument("--out", required=True, help="output folder (an evaluation's report folder gains the block)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override eval.* / scaling.* keys (`pipeline keys evaluate`)")
    p.add_argument("--address", default=None, help="Ray cluster address")
    p = command("export", help="write an index folder's embeddings in another tool's layout")
    p.add_argument("--index", required=True, help="index folder written by `pipeline index` or `pipeline run`")
    p.add_argument("--out", required=True, help="output folder (local or s3://)")
    p.add_argument("--format", default="clip-retrieval", choices=["clip-retrieval"],
                   help="clip-retrieval: img_emb/, text_emb/ (.npy) and metadata/ (.parquet), as its inference "
                        "writes them and embedding-reader and autofaiss read them")
    p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint for s3:// folders")


def _import_model_command(command) -> None:
    """`pipeline import-model`: a pretrained pair as a checkpoint."""
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


def _search_command(command) -> None:
    """`pipeline search`: query a built index."""
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
                   "checkpoint, or that checkpoint (or its run dir) when its run had rerank.enabled: the top "
                   "--rerank-k hits are re-ordered by it")
    p.add_argument("--rerank-k", type=int, default=20, help="hits re-scored with --rerank (default 20)")
    p.add_argument("--out", default=None, help="also write each hit's gallery image into this folder "
                   "(RANK_KEY.jpg; for an image query, the image each caption belongs to), with hits.json")


def _serve_command(command) -> None:
    """`pipeline serve`: the index behind an HTTP search API and page, on Ray Serve."""
    p = command("serve", help="serve a built index: POST /search, GET /image/<key>, GET /healthz and a search page "
                "at / (Ray Serve)")
    p.add_argument("--index", required=True, help="index folder written by `pipeline index` or `pipeline run`")
    p.add_argument("--checkpoint", default=None, help="the model that encodes queries (default: the one the index "
                   "was built with)")
    p.add_argument("--rerank", default=None, help="a re-ranker for the index's checkpoint (as `pipeline search "
                   "--rerank`): requests may ask for it")
    p.add_argument("--rerank-k", type=int, default=20, help="hits re-scored when a request asks (default 20)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for "
                   "every interface)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--replicas", type=int, default=1, help="replicas of the search deployment (default 1)")
    p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint when the index is on s3://")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")


def _data_commands(command, common) -> None:
    """`pipeline data synth | convert-karpathy | inspect`."""
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
    p = data_command("convert-csv", help="write a CSV/TSV of image paths and captions as img2dataset-layout shards")
    p.add_argument("--csv", required=True, help="the CSV/TSV file (local or s3://); image paths relative to its folder, "
                   "absolute or s3://")
    p.add_argument("--out", required=True, help="output folder for the shards")
    _csv_flags(p)
    p.add_argument("--format", default="webdataset", choices=["webdataset", "parquet"], help="shard format")
    p.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint for an s3:// CSV")
    p = data_command("inspect", help="count samples, show the schema, caption lengths, unreadable samples")
    p.add_argument("path", help="shards: path, folder, glob or brace list (.tar, .parquet, .csv/.tsv or a folder of "
                   "images; local or s3://)")
    p.add_argument("--show", type=int, default=20, help="unreadable samples listed by key (default 20)")
    _csv_flags(p)
    p.add_argument("--endpoint-url", default="", help="S3-compatible endpoint for s3:// paths")
    p.add_argument("--address", default=None, help="Ray cluster address")


def _csv_flags(p) -> None:
    """A CSV/TSV input's columns, as OpenCLIP's flags name them (the data.csv_* keys of the other commands)."""
    p.add_argument("--csv-img-key", default="filepath", help="CSV/TSV: the image path column (data.csv_image_key; "
                   "default filepath)")
    p.add_argument("--csv-caption-key", default="title", help="CSV/TSV: the caption column (data.csv_caption_key; "
                   "default title)")
    p.add_argument("--csv-separator", default="auto", help="CSV/TSV: auto (tab for .tsv, else whichever splits the "
                   "header into the image column), ',' or '\\t'")
