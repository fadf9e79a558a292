"""Ray Data ingest: resolve shard specs, read shards (`data.formats.shards`), decode/augment/tokenise (a training
epoch's read tasks do it themselves, `data.epoch.source`; evaluation rows in `map_batches`), scan captions for
the vocabulary, and count skipped samples by reason in a small actor.

Path forms: a file, a directory (every .tar/.parquet under it), a glob (`shards/*.tar`), a brace list
(`shards/{00000..00127}.tar`, `{a,b}.tar`), several of these separated by commas; local or s3://.
"""
from __future__ import annotations

import glob
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError
from pipeline.data import transforms
from pipeline.data.formats.shards import (check_parquet_schema, check_parquet_types, first_readable_schema,
                                   is_download_metadata, make_source, parquet_schema, shard_format)
from pipeline.data.text.tokenizer import Tokenizer

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_ALT = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(spec: str) -> list[str]:
    """'a/{00..02}.tar' -> ['a/00.tar', 'a/01.tar', 'a/02.tar']; '{x,y}.tar' -> ['x.tar', 'y.tar']."""
    found = [m for m in (_RANGE.search(spec), _ALT.search(spec)) if m]
    if not found:
        return [spec]
    m = min(found, key=lambda m: m.start())  # leftmost brace varies slowest, like the shell
    if m.re is _RANGE:
        lo, hi = m.group(1), m.group(2)
        width = len(lo) if lo.startswith("0") else 0
        alts = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        alts = m.group(1).split(",")
    return [p for alt in alts for p in expand_braces(spec[:m.start()] + alt + spec[m.end():])]


def split_specs(spec: str) -> list[str]:
    """Split on commas outside braces."""
    parts, depth, cur = [], 0, ""
    for ch in spec:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in parts + [cur] if p.strip()]


def _listing(path: str) -> tuple[list[str], bool]:
    """(matching shard paths, whether `path` names something that exists) for one brace-free spec."""
    from pipeline import storage

    if storage.is_remote(path):
        fs = storage.s3_filesystem()
        if any(c in path for c in "*?["):
            return sorted("s3://" + p for p in fs.glob(path) if _is_shard(p)), True
        if fs.isdir(path):
            return _shards_or_folders(["s3://" + p for p in fs.find(path)]), True
        return ([path], True) if fs.exists(path) else ([], False)
    if any(c in path for c in "*?["):
        return sorted(p for p in glob.glob(path) if _is_shard(p)), True
    p = Path(path)
    if p.is_dir():
        return _shards_or_folders([str(q) for q in p.rglob("*")]), True
    return ([str(p)], True) if p.exists() else ([], False)


def _is_shard(path: str) -> bool:
    return path.lower().endswith((".tar", ".parquet", ".csv", ".tsv"))


def _shards_or_folders(found: list[str]) -> list[str]:
    """A directory's shards; where it holds none, its image folders (each directory with images of its own, as
    a folder shard `DIR/`): clip-retrieval's `--input_format files`, and ImageFolder's class folders."""
    from pipeline.data.formats.files import is_image_file

    shards = sorted(p for p in found if _is_shard(p))
    return shards or sorted({p.rsplit("/", 1)[0] + "/" for p in found if is_image_file(p)})


@dataclass
class ShardList:
    """The shards a data spec matches, and the names in a brace list that do not exist (img2dataset leaves
    such gaps when a shard fails to download): those are skipped and reported as missing_shard."""
    paths: list[str]
    missing: list[str] = field(default_factory=list)


def resolve_shards(spec: str, key: str = "data path") -> ShardList:
    """Shard spec -> ShardList; a ConfigError naming the key when nothing usable matches, when a plain
    path does not exist, or when WebDataset and Parquet shards are mixed."""
    out, missing = [], []
    for part in split_specs(spec):
        expanded = expand_braces(part)
        for path in expanded:
            found, exists = _listing(path)
            if not exists and len(expanded) == 1:
                raise ConfigError(f"{key}: {path} does not exist; check the path or generate data with "
                                  "`pipeline data synth --out DIR`")
            if not exists:
                missing.append(path)
            out += found
    out = _drop_download_metadata(list(dict.fromkeys(out)))
    if not out:
        raise ConfigError(f"{key}={spec!r} matches no shard; point it at .tar or .parquet files, a folder or a glob")
    kinds = {shard_format(p) for p in out}
    if len(kinds) > 1:
        raise ConfigError(f"{key}={spec!r} mixes WebDataset and Parquet shards; point it at one format")
    return ShardList(out, missing)


def _drop_download_metadata(paths: list[str]) -> list[str]:
    """img2dataset's WebDataset output writes NNNNN.parquet beside each NNNNN.tar: its download metadata (url,
    status, error_message; no image column). That is no shard: the tar's reader takes its failed downloads
    from it. A Parquet there that does hold images is a second format, and stays to be refused."""
    tars = {p[: -len(".tar")] for p in paths if shard_format(p) == "webdataset"}
    paired = [p for p in paths if shard_format(p) == "parquet" and p[: -len(".parquet")] in tars]
    if not paired:
        return paths
    with ThreadPoolExecutor(8) as pool:  # a footer read each: in parallel, for S3's latency
        metadata = {p for p, is_meta in zip(paired, pool.map(_is_download_metadata, paired)) if is_meta}
    return [p for p in paths if p not in metadata]


def _is_download_metadata(path: str) -> bool:
    import pyarrow as pa

    try:
        return is_download_metadata(parquet_schema(path).names)
    except (pa.ArrowInvalid, OSError):
        return True  # an unreadable file beside its tar is no shard either


def absolute_spec(spec: str) -> str:
    """The same spec with local parts made absolute: a process whose working directory differs (a Tune
    trial runs in its trial directory) still finds the shards."""
    from pipeline import storage

    return ",".join(p if storage.is_remote(p) else os.path.abspath(p) for p in split_specs(spec))


def absolute_train(data_cfg) -> str | list:
    """data.train with its local paths made absolute (a plain spec, or each source's path)."""
    if isinstance(data_cfg.train, list):
        return [dict(s, path=absolute_spec(s["path"])) for s in data_cfg.train]
    return absolute_spec(data_cfg.train)


def expand_paths(spec: str, key: str = "data path") -> list[str]:
    """Shard spec -> sorted list of existing shard paths (see resolve_shards)."""
    return resolve_shards(spec, key).paths


def check_shards(paths: list[str], key: str) -> None:
    """Before any Ray work: a readable Parquet shard must have image and caption columns (the footer is
    cheap to read, local or S3); local tars must not all be empty."""
    import tarfile

    from pipeline import storage

    kind = shard_format(paths[0])
    if kind == "csv":  # every header (a CSV is a large shard: there are few), in parallel for S3's latency
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: _check_csv_header(p, key), paths))
        return
    if kind == "folder":
        return  # listed because it holds images
    if kind == "parquet":
        readable = first_readable_schema(paths)  # an unreadable shard is skipped and counted, not fatal
        if readable is None:
            raise ConfigError(f"{key}: none of the {len(paths)} Parquet shard(s) it matches is readable "
                              "(empty, cut short or not Parquet); point it at readable shards")
        try:
            check_parquet_schema(readable[1].names, readable[0])
            check_parquet_types(readable[1], readable[0])
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
        return
    if any(storage.is_remote(p) for p in paths):
        return  # listing members costs a read per shard on S3; the scan pass reports emptiness there
    for p in paths:
        try:
            with tarfile.open(p, "r|*") as tar:
                if next(iter(tar), None) is not None:
                    return
        except (tarfile.TarError, OSError, EOFError):
            continue  # unreadable shards are the data checks' business; keep looking for a usable one
    raise ConfigError(f"{key}: the {len(paths)} shard(s) it matches hold no samples; point it at non-empty "
                      "WebDataset .tar or Parquet shards")


def _check_csv_header(path: str, key: str) -> None:
    """A CSV's header names the image and caption columns (data.csv_*), before any Ray work."""
    from pipeline import storage
    from pipeline.data.formats import files

    fs, bare = storage.arrow_filesystem(path)
    try:
        with fs.open_input_stream(bare) as f:
            _, header, _ = files.read_header(f, path, files.current())
        files.check_header(header, path, files.current())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {e}") from None


# ------------------------------------------------------------------------------------------ Ray Data


def read_shards(paths: list[str], with_images: bool = True):
    """The shards' rows as a Ray Data dataset (`shards.make_source`), every row once, local or s3://. Ray Data
    picks the read tasks: an evaluation pass wants its few shards split for the embedding actor pool (training
    reads through `epoch_source`, one task per shard)."""
    import ray.data

    return ray.data.read_datasource(make_source(paths, with_images=with_images))


PREPARE_ROWS = 128  # rows a training read task decodes at once, each batch closed by its tally row


def train_epoch_dataset(share, all_paths: list[str], tokenizer: Tokenizer, data_cfg, seed: int, epoch: int,
                        cursor=None, cpus: float | None = None, cache=None):
    """One training worker's epoch (`epoch_plan.WorkerShare`), in position order, from `cursor` on: the
    prepared sample rows {'key', 'image' (3,S,S) uint8, 'tokens' (L,), 'pos', 'tally': ''} and after each
    prepared batch a tally row ('tally': JSON of the positions it covered and its skips; see `batcher`).
    `cpus`: the share of the cluster's CPUs this worker's reads and decodes may hold at once; `cache`: the
    run's decoded-image cache actor (data.cache_decoded, `decoded_cache`), or None. None when the cursor is
    past every shard of the share."""
    import ray.data

    source = train_epoch_source(share, all_paths, tokenizer, data_cfg, seed, epoch, cursor, cache)
    if source is None:
        return None
    size = data_cfg.image_size
    ds = ray.data.read_datasource(source, override_num_blocks=len(source.shards) - source.first)
    ds.context.target_max_block_size = 2 * PREPARE_ROWS * (3 * size * size + 8 * tokenizer.max_tokens + 256)
    options = ds.context.execution_options
    options.preserve_order = True  # positions must arrive in order (see batcher)
    if cpus:
        options.resource_limits = options.resource_limits.copy(cpu=cpus)
    ds.context.enable_progress_bars = False
    return ds


def train_epoch_source(share, all_paths: list[str], tokenizer: Tokenizer, data_cfg, seed: int, epoch: int,
                       cursor=None, cache=None):
    """The datasource behind `train_epoch_dataset` (its read tasks can also run in this process, as
    bench/ingest.py profiles them), or None when the cursor is past every shard of the share."""
    import json

    from pipeline.data.epoch import device_decode
    from pipeline.data.epoch.decoded_cache import CacheClient, base_side
    from pipeline.data.epoch.plan import RowFilter
    from pipeline.data.epoch.source import EpochSource
    from pipeline.data.skips import SkipTally

    size, augment, scale_min = data_cfg.image_size, data_cfg.augment, data_cfg.crop_scale_min
    view = transforms.image_view(data_cfg)
    first = cursor.first_shard() if cursor is not None else 0
    paths = share.shards[first:]
    if not paths:
        return None

    base = base_side(size) if cache is not None else 0

    def prepare(batch):
        if data_cfg.decode == "gpu":  # JPEG bytes and the views' boxes; the worker decodes (device_decode)
            out, skips = device_decode.plan_train_batch(batch, tokenizer, size, augment, scale_min, view)
        else:
            out, skips = transforms.prepare_train_batch(batch, tokenizer, size, augment, scale_min, view, base)
        tally = SkipTally()
        tally.add_keys(skips)
        pos = np.asarray(batch["pos"], dtype=np.int64)
        mark = json.dumps({"first": int(pos.min()), "last": int(pos.max()), **tally.to_dict()})
        n = len(out["key"])
        rows = {c: _with_blank_row(c, v) for c, v in out.items() if c != "pos"}
        return {**rows, "pos": np.append(out["pos"], pos.max()), "tally": np.array([""] * n + [mark], dtype=object)}

    # Each read task decodes its rows itself, 128 at a time (a separate map_batches(batch_size=128) is not
    # fused with a read, and Ray Data holds a read's raw rows back until a 128 MiB block fills: with small
    # images a worker's first batch waited for its whole first shard). Blocks of about one prepared batch
    # then leave the task as they are made.
    return EpochSource(share.shards, first, all_paths, shuffle_seed=seed, shuffle_block=data_cfg.shuffle_block,
                       epoch=epoch, row_filter=RowFilter.of(share, cursor), prepare=prepare,
                       chunk_rows=PREPARE_ROWS,
                       cache=(CacheClient(cache), base, view[0]) if cache is not None else None)


def _with_blank_row(name: str, column: np.ndarray) -> np.ndarray:
    """`column` and one blank row of its kind after it (where a prepared batch's tally row goes); the bytes
    column stays bytes in an all-skipped batch too, so that every block has one schema."""
    if column.dtype != object:
        return np.concatenate([column, np.zeros((1, *column.shape[1:]), column.dtype)])
    return np.append(column, np.array([b"" if name == "jpeg" else ""], dtype=object))


def eval_dataset(paths: list[str], image_size: int, skip_log=None, split: str = "val",
                 view: tuple[str, str] = ("bilinear", "shortest"), captionless: bool = False):
    """-> Dataset of {'key', 'image' (3,S,S) uint8, 'captions' JSON list, ...}, unaugmented, in shard order.
    view: (interpolation, resize mode), `transforms.image_view` of the model's data config; captionless: keep
    images without a caption (`transforms.prepare_eval_batch`)."""

    from pipeline.data.local_passes import prepare_eval

    skip_log = skip_log.shared() if skip_log is not None else None  # its copies go into Ray Data's tasks
    return read_shards(paths).map_batches(
        lambda batch: prepare_eval(batch, image_size, skip_log, split, view, captionless),
        batch_size=128, batch_format="numpy")


def eval_shard_tasks(paths: list[str], image_size: int, view: tuple[str, str] = ("bilinear", "shortest")
                     ) -> tuple[list, list]:
    """One Ray task per shard preparing its evaluation rows as `eval_dataset` does: for a validation set the
    workers keep in memory, read once while the worker group starts (a Ray Data pipeline per worker would start
    after it). -> (ObjectRefs of each shard's {'key', 'image' (n,3,S,S) uint8, 'captions'}, ObjectRefs of its
    skipped samples {reason: keys}). The skips come back beside the rows, so that no skip-log actor (a process
    of its own) is needed; a shard is prepared once, so no key is counted twice."""
    import ray

    from pipeline import storage
    from pipeline.data.formats import files
    from pipeline.data.local_passes import shard_batch
    from pipeline.data.formats.shards import shard_names
    from pipeline.data.transforms import prepare_eval_batch

    names, options, layout = shard_names(paths), storage.options(), files.current()

    def prepare_shard(path: str) -> tuple[dict, dict]:
        storage.configure(**options)  # a task's process knows no S3 endpoint the driver was given
        files.use(layout)  # nor the CSV columns
        out, skips = prepare_eval_batch(shard_batch(path, names[path]), image_size, view)
        return {k: out[k] for k in ("key", "image", "captions")}, skips

    # "DEFAULT" keeps the tasks out of a Tune trial's placement group, whose one small bundle is the
    # driver's; Ray Data's own tasks escape it the same way (its scheduling strategy is SPREAD).
    task = ray.remote(num_cpus=1, num_returns=2, scheduling_strategy="DEFAULT")(prepare_shard)
    refs = [task.remote(p) for p in paths]
    return [rows for rows, _ in refs], [skips for _, skips in refs]


IN_PROCESS_SHARDS = 8  # a caption pass over this many shards or fewer reads them in the driver's threads


@dataclass
class Scan:
    tokenizer: Tokenizer  # the word tokenizer of the counts (data.tokenizer=word)
    counts: Counter  # word -> count over the usable captions
    usable: int  # samples with an image member and a caption (decodability is learnt while training)
    samples: int  # every sample in the shards, the denominator of data.max_skip_fraction


def scan_training_data(paths: list[str], data_cfg) -> Scan:
    """One Ray Data pass over the captions (image bytes are skipped, not read into memory): the vocabulary
    and the sample counts."""
    counts: Counter = Counter()
    if len(paths) <= IN_PROCESS_SHARDS:  # a Ray Data pipeline takes seconds to start; a few shards, less to read
        batches = _scan_in_process(paths)
    else:
        ds = read_shards(paths, with_images=False).map_batches(transforms.scan_captions, batch_format="numpy")
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
    for batch in batches:
        for w, c in zip(batch["word"], batch["count"]):
            counts[str(w)] += int(c)
    usable, samples = counts.pop("", 0), counts.pop("\x00samples", 0)
    tok = Tokenizer.from_counts(counts, data_cfg.max_tokens, data_cfg.vocab_min_count, data_cfg.vocab_max_size)
    return Scan(tok, counts, usable, samples)


def _scan_in_process(paths: list[str]):
    """`transforms.scan_captions` of every shard, read in threads of this process (see IN_PROCESS_SHARDS)."""
    from pipeline import storage
    from pipeline.data.formats.shards import iter_shard, rows_to_batch, shard_names

    names, fs = shard_names(paths), storage.arrow_filesystem(paths[0])[0]

    def scan(path: str) -> dict:
        return transforms.scan_captions(rows_to_batch(list(iter_shard(path, names[path], False, fs)), path))

    with ThreadPoolExecutor(min(8, len(paths))) as pool:
        yield from pool.map(scan, paths)
