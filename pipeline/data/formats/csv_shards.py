"""`pipeline data convert-csv`: a CSV/TSV of image paths and captions written once as img2dataset-layout shards
(`ShardWriter`: `NNNNN.tar` with `KEY.jpg`, `KEY.txt`, `KEY.json`, or Parquet, each with `_stats.json`), for
users who would rather shard once than read thousands of small files every epoch.

The CSV is read by the one reader every job uses (`files.iter_csv_samples`); what it skips (a missing or
unreadable image, a line without the image column, an empty caption, bytes Pillow cannot open) is counted by
reason and left out. Each sample's json keeps the image's source path, as img2dataset keeps its URL.
"""
from __future__ import annotations

import io
import json
import posixpath
from collections import Counter
from typing import Any

from pipeline.data.formats.files import CsvLayout
from pipeline.data.formats.writer import ShardWriter

EXAMPLES = 3


def _usable(row: dict) -> str:
    """'' for a row to write, else why it is skipped."""
    from PIL import Image, UnidentifiedImageError

    if row["problem"]:
        return row["problem"]
    if not (row["txt"] or "").strip():
        return "empty_caption"
    try:
        with Image.open(io.BytesIO(row["image"])) as img:
            img.verify()  # the header and structure, without decoding every pixel
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "corrupt_image"
    return ""


def convert_csv(csv_path: str, out_dir: str, fmt: str = "webdataset", shard_size: int = 10000,
                layout: CsvLayout | None = None) -> dict[str, Any]:
    """Write every usable row of `csv_path` (local or s3://) into shards under `out_dir`. -> summary"""
    from pipeline.data.formats import files
    from pipeline.data.formats.shards import iter_shard

    if layout is not None:
        files.use(layout)
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    with ShardWriter(out_dir, fmt, shard_size) as writer:
        for row in iter_shard(csv_path, posixpath.basename(csv_path)):
            why = _usable(row)
            source = json.loads(row["json"])["image_path"] if row["json"] else ""
            if why:
                skipped[why] += 1
                examples.setdefault(why, [])
                if len(examples[why]) < EXAMPLES:
                    examples[why].append(source or row["key"])
                continue
            ext = source.rsplit(".", 1)[-1] if "." in posixpath.basename(source) else "jpg"
            writer.write(row["image"], ext, [" ".join(row["txt"].split())], {"image_path": source})
    return {"written": writer.count, "shards": [str(p) for p in writer.paths], "skipped": dict(skipped),
            "examples": examples, "format": fmt, "out": str(out_dir)}


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"wrote {summary['written']} samples into {len(summary['shards'])} {summary['format']} shard(s) under "
             f"{summary['out']}"]
    for why, n in sorted(summary["skipped"].items()):
        lines.append(f"{why}: {n} skipped (e.g. {', '.join(summary['examples'].get(why, []))})")
    if not summary["skipped"]:
        lines.append("skipped: none")
    return "\n".join(lines)
