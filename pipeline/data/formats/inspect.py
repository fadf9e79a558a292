"""`pipeline data inspect PATH`: sample counts, the schema (members or columns), caption statistics,
img2dataset's own download statistics when its `*_stats.json` files are there, and unreadable samples by
reason, computed with Ray Data over the shards."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from pipeline import storage
from pipeline.data import transforms
from pipeline.data.formats.shards import NOT_SAMPLES, first_readable_schema, shard_format


def _scan(batch: dict) -> dict:
    """One row per row read: which members it has, its caption count and length, and why it is unusable."""
    members, n_caps, words, problem = [], [], [], []
    for key, raw, txt, meta, prob, _seed in transforms.iter_samples(batch):
        # rows that are not samples (a failed download, a cut-off shard) have no members to tally
        present = (c for c, v in (("image", raw), ("txt", txt), ("json", meta)) if v is not None)
        members.append(None if prob in NOT_SAMPLES else ",".join(present))
        caps, why = transforms.parse_captions(txt, meta)
        n_caps.append(len(caps))
        words.append(float(np.mean([len(c.split()) for c in caps])) if caps else 0.0)
        skips: dict = {}
        transforms.decode_or_skip(key, raw, prob, why, skips)
        detail = _failure(meta) if prob == "not_downloaded" else ""
        problem.append(f"{next(iter(skips))}:{key}{detail}" if skips else "")
    return {"members": np.array(members, dtype=object), "n_captions": np.array(n_caps),
            "caption_words": np.array(words), "problem": np.array(problem, dtype=object)}


def _failure(meta) -> str:
    """' (error, url)' for a failed download, whose row's json holds what img2dataset recorded; else ''."""
    try:
        d = json.loads(meta) if meta is not None else {}
    except (ValueError, UnicodeDecodeError):
        return ""
    return f" ({d.get('error_message')}, {d.get('url')})" if isinstance(d, dict) and d else ""


def schema_lines(paths: list[str]) -> list[str]:
    """The columns of a Parquet shard with their types, a CSV's header; WebDataset shards and image folders are
    described by their members."""
    kind = shard_format(paths[0])
    if kind == "csv":
        from pipeline.data.formats import files

        layout = files.current()
        fs, bare = storage.arrow_filesystem(paths[0])
        with fs.open_input_stream(bare) as f:
            _, header, sep = files.read_header(f, bare, layout)
        return [f"format: csv ({'tab' if sep == chr(9) else repr(sep)}-separated)", "columns: " + ", ".join(header),
                f"images: {layout.image_key} (data.csv_image_key), captions: {layout.caption_key} (data.csv_caption_key)"]
    if kind == "folder":
        return [f"format: image folder ({len(paths)} folder(s) of .jpg/.jpeg/.png/.webp; NAME.txt beside an image "
                "is its caption)"]
    if kind != "parquet":
        return ["format: webdataset (.tar)"]
    readable = first_readable_schema(paths)
    if readable is None:
        return ["format: parquet (no shard readable)"]
    schema = readable[1]
    return ["format: parquet", "columns: " + ", ".join(f"{n} ({t})" for n, t in zip(schema.names, schema.types))]


def download_stats(paths: list[str]) -> dict:
    """Sums of img2dataset's `{shard}_stats.json` next to the shards (count, successes, failures)."""
    totals: Counter = Counter()
    for p in paths:
        stats = p.rsplit(".", 1)[0] + "_stats.json"
        if not storage.exists(stats):
            continue
        try:
            d = json.loads(storage.read_text(stats))
        except ValueError:
            continue
        totals.update({k: v for k, v in d.items() if isinstance(v, int) and not isinstance(v, bool)})
    return dict(totals)


def inspect_shards(shards, show: int = 20) -> str:
    """`shards`: an ingest.ShardList (paths plus names missing from a brace list)."""
    from pipeline.data.ingest import read_shards

    paths = shards.paths
    members, problems = Counter(), []
    n_caps, words = [], []
    for b in read_shards(paths).map_batches(_scan, batch_format="numpy").iter_batches(batch_size=None,
                                                                                     batch_format="numpy"):
        # a row that is no sample holds None, which a block's conversion may have turned into NaN
        members.update(m for m in b["members"].tolist() if isinstance(m, str))
        n_caps += b["n_captions"].tolist()
        words += b["caption_words"].tolist()
        problems += [p for p in b["problem"].tolist() if p]
    by_reason = Counter(p.split(":", 1)[0] for p in problems)
    not_samples = sum(by_reason[r] for r in NOT_SAMPLES)
    n = len(n_caps) - by_reason["truncated_shard"] - by_reason["unreadable_shard"]  # rows standing for shards
    lines = [f"shards: {len(paths)}" + (f" ({len(shards.missing)} missing from the brace list)" if shards.missing
                                        else ""), *schema_lines(paths),
             f"samples: {n}", f"usable: {len(n_caps) - len(problems)}",
             "members per sample: " + ", ".join(f"{k or '(none)'} x{v}" for k, v in members.most_common())]
    caps = [c for c, p in zip(n_caps, words) if p > 0]
    if caps:
        lines += [f"captions per sample: mean {np.mean(caps):.2f}, min {min(caps)}, max {max(caps)}",
                  f"words per caption: mean {np.mean([w for w in words if w]):.1f}, "
                  f"p95 {np.percentile([w for w in words if w], 95):.0f}, max {max(words):.0f}"]
    stats = download_stats(paths)
    if stats:
        lines.append("img2dataset stats: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    lines.append("unreadable: " + (", ".join(f"{r} x{c}" for r, c in by_reason.most_common()) or "none")
                 + (f" ({not_samples} rows are not samples)" if not_samples else ""))
    lines += [f"  {p}" for p in problems[:show]]
    if len(problems) > show:
        lines.append(f"  ... and {len(problems) - show} more")
    lines += [f"  missing_shard:{m}" for m in shards.missing[:show]]
    return "\n".join(lines)
