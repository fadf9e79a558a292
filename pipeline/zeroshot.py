"""Zero-shot classification as clip_benchmark scores it: an ImageFolder-style dataset (one subfolder per class),
each class's classifier row the mean of its L2-normalised template embeddings, normalised again; top-1, top-5
(with at least 5 classes) and mean per-class recall, in percent.

    pipeline zeroshot --checkpoint runs/demo --data photos/ [--classes names.txt] [--templates openai] --out DIR

The images go through the one embedding pass (`index.embedding_passes`, into `<out>/index/`): the checkpoint's
own evaluation view, Ray Data actors for a large set, skipped images counted by reason. Writes
`<out>/zeroshot.json`, `zeroshot.md`, `zeroshot.html` (+ `plots/per_class_recall.png`) and, where `<out>` holds an
evaluation's `report.json`, a `zeroshot` block in it.
"""
from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import storage
from pipeline.data.text.prompts import fill, load_templates
from pipeline.metrics import mean_per_class_recall, zero_shot_accuracy


@dataclass(frozen=True)
class ClassFolders:
    root: str  # the dataset folder (absolute, or s3://), without a trailing /
    folders: list[str]  # its class subfolders' names, sorted as torchvision's ImageFolder sorts them
    names: list[str]  # the class names the prompts use, one per folder

    def labels(self, image_paths: list[str]) -> np.ndarray:
        """Index of the class folder each image file lies under; -1 for one directly in the root."""
        index = {f: i for i, f in enumerate(self.folders)}
        rel = [p[len(self.root) + 1:] if p.startswith(self.root + "/") else "" for p in image_paths]
        return np.array([index.get(r.split("/", 1)[0], -1) if "/" in r else -1 for r in rel], dtype=np.int64)


def class_folders(data: str, shard_paths: list[str], classes_file: str = "") -> ClassFolders:
    """The classes of an ImageFolder dataset from its folder shards (`ingest.resolve_shards`): every first-level
    subfolder holding images, at any depth below it. `classes_file`: the names the prompts use, one per line in
    the folders' order, or a JSON list, or a JSON {folder: name} map; default the folder names."""
    root = data.rstrip("/") if storage.is_remote(data) else os.path.abspath(data)
    bare = [p.rstrip("/") if storage.is_remote(p) else os.path.abspath(p) for p in shard_paths]
    folders = sorted({posixpath.relpath(p, root).split("/", 1)[0] for p in bare if p != root})
    if not folders or any(not p.endswith("/") for p in shard_paths):
        raise ValueError(f"--data {data}: zero-shot classification reads an image folder with one subfolder per "
                         "class (class/NAME.jpg), like torchvision's ImageFolder")
    if root in bare:
        raise ValueError(f"--data {data}: it holds images of its own, beside its class folders; move them into "
                         "the folder of their class")
    # the folder names as they are, as clip_benchmark takes an ImageFolder's `classes`
    return ClassFolders(root, folders, _read_names(classes_file, folders) if classes_file else folders)


def _read_names(path: str, folders: list[str]) -> list[str]:
    if not storage.exists(path):
        raise ValueError(f"--classes {path} does not exist")
    text = storage.read_text(path)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(parsed, dict):
        missing = [f for f in folders if f not in parsed]
        if missing:
            raise ValueError(f"--classes {path}: no name for the class folder(s) {missing[:5]}")
        return [str(parsed[f]) for f in folders]
    if not isinstance(parsed, list) or len(parsed) != len(folders):
        n = len(parsed) if isinstance(parsed, list) else 0
        raise ValueError(f"--classes {path}: {n} names for {len(folders)} class folders; give one name per line, in "
                         f"the folders' sorted order ({', '.join(folders[:3])}, ...)")
    return [str(n) for n in parsed]


@torch.no_grad()
def classifier(encode_text, names: list[str], templates: list[str]) -> torch.Tensor:
    """(C, D): per class, the mean of its prompts' normalised embeddings, normalised (clip_benchmark's
    `zero_shot_classifier`, rows instead of columns)."""
    rows = []
    for name in names:
        emb = F.normalize(encode_text([fill(t, name) for t in templates]).float(), dim=-1).mean(0)
        rows.append(emb / emb.norm())
    return torch.stack(rows)


def score(image_emb: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> dict:
    """Top-1 / top-5 (percent; top-5 only with 5 classes or more, as clip_benchmark) and mean per-class recall."""
    image_emb = F.normalize(image_emb.float(), dim=-1)
    logits = image_emb @ weights.T  # (N, C)
    pred = logits.argmax(1)
    recalls = mean_per_class_recall(pred, labels, weights.shape[0])
    return {**zero_shot_accuracy(image_emb, weights, labels), "mean_per_class_recall": recalls["mean"],
            "per_class_recall": recalls["per_class"]}


@dataclass(frozen=True)
class ZeroShotPlan:
    """What a zero-shot run reads, checked before any Ray work: the folder's shards, its classes, the templates."""
    data: str
    paths: list[str]
    folders: ClassFolders
    templates: str  # openai | simple | the file's path
    prompts: list[str]


def plan(data: str, classes_file: str = "", templates: str = "openai") -> ZeroShotPlan:
    """A ValueError naming the flag at fault for a folder without class subfolders, names that do not fit the
    folders, or templates without a place for the class name."""
    from pipeline.data.ingest import expand_paths

    prompts = load_templates(templates)
    paths = expand_paths(data, "--data")
    return ZeroShotPlan(data, paths, class_folders(data, paths, classes_file), templates, prompts)


def run(checkpoint: str, data: str | ZeroShotPlan, out: str, eval_cfg, scaling, classes_file: str = "",
        templates: str = "openai") -> dict:
    """Embed the folder's images, classify them among its classes, write the report. -> the zeroshot block"""
    from pipeline.checkpoint import read_config
    from pipeline.data.skips import SkipLog
    from pipeline.encoder import load
    from pipeline.index.embedding_passes import IMAGES, embed_to_parquet, read_columns, vectors_of

    planned = data if isinstance(data, ZeroShotPlan) else plan(data, classes_file, templates)
    data, paths, folders, prompts = planned.data, planned.paths, planned.folders, planned.prompts
    templates = planned.templates
    skip_log = SkipLog.start()
    image_size = read_config(checkpoint)["data"]["image_size"]
    index_dir = storage.join(out, "index")
    embed_to_parquet(checkpoint, paths, image_size, index_dir, scaling.num_workers, scaling.use_gpu,
                     eval_cfg.batch_size, skip_log, eval_cfg.in_driver_images, captionless=True)
    images = read_columns(storage.join(index_dir, IMAGES), ["key", "path", "vector"])
    labels = folders.labels(images.column("path").to_pylist())
    if (labels < 0).any():
        raise ValueError(f"--data {data}: {int((labels < 0).sum())} image(s) lie in no class folder")
    encoder = load(checkpoint, "cuda" if scaling.use_gpu and torch.cuda.is_available() else "cpu")
    weights = classifier(encoder.encode_text, folders.names, prompts)
    block = score(torch.from_numpy(vectors_of(images)), torch.from_numpy(labels), weights)
    skipped = {r: len(k) for r, k in skip_log.read().get("gallery", {}).items()}
    block = {**{k: v for k, v in block.items() if k != "per_class_recall"}, "classes": len(folders.names),
             "images": len(labels), "templates": templates if templates in ("openai", "simple") else "file",
             "n_templates": len(prompts), "prompt": fill(prompts[0], "{}"), "skipped": skipped,
             "per_class": [{"folder": f, "name": n, "images": int((labels == i).sum()), "recall": r}
                           for i, (f, n, r) in enumerate(zip(folders.folders, folders.names,
                                                             block["per_class_recall"]))],
             "checkpoint": checkpoint, "data": data}
    write(out, block)
    return block


def format_summary(block: dict, out: str) -> str:
    top5 = f", top-5 {block['top5']:.1f} %" if "top5" in block else ""
    skipped = sum(block["skipped"].values())
    return (f"zero-shot: {block['images']} images, {block['classes']} classes, {block['n_templates']} templates: "
            f"top-1 {block['top1']:.1f} %{top5}, mean per-class recall {block['mean_per_class_recall']:.1f} %"
            + (f" ({skipped} images skipped: {block['skipped']})" if skipped else "")
            + f"\nreport: {storage.join(out, 'zeroshot.html')} (+ zeroshot.md, zeroshot.json)")


def markdown(block: dict) -> str:
    heads = [k for k in ("top1", "top5", "mean_per_class_recall") if k in block]
    lines = [f"## Zero-shot classification ({block['classes']} classes, {block['n_templates']} templates: "
             f"{block['templates']})", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads),
             "| " + " | ".join(f"{block[k]:.2f}" for k in heads) + " |", "", "| class | images | recall % |",
             "|---|---|---|"]
    lines += [f"| {c['name']} | {c['images']} | {c['recall']:.1f} |" for c in block["per_class"]]
    return "\n".join(lines) + "\n"


def write(out: str, block: dict) -> None:
    """zeroshot.json / .md / .html and the per-class plot into `out`; the block into an evaluation's report.json
    there."""
    from pipeline.report_html import plot_class_recall, write_zeroshot_html

    with storage.staging_dir(out) as local:
        (local / "zeroshot.json").write_text(json.dumps(block, indent=2))
        (local / "zeroshot.md").write_text(markdown(block))
        plot = local / "plots" / "per_class_recall.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        write_zeroshot_html(local, block, plot if plot_class_recall(block["per_class"], plot) else None)
    report = storage.join(out, "report.json")
    if storage.exists(report):
        rep = json.loads(storage.read_text(report))
        rep["zeroshot"] = block
        storage.write_text(report, json.dumps(rep, indent=2))
