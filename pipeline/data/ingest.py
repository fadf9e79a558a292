"""Ray Data ingest: expand shard specs, read WebDataset shards, decode/augment/tokenise in `map_batches`,
build the vocabulary, and count skipped samples by reason in a small actor.

Path forms: a file, a directory (every *.tar under it), a glob (`shards/*.tar`), a brace list
(`shards/{00000..00127}.tar`, `{a,b}.tar`), several of these separated by commas; local or s3://.
"""
from __future__ import annotations

import glob
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError
from pipeline.data import transforms
from pipeline.data.tokenizer import Tokenizer

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


def _split_specs(spec: str) -> list[str]:
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


def _expand_one(path: str, key: str) -> list[str]:
    if path.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem()
        if any(c in path for c in "*?["):
            return sorted("s3://" + p for p in fs.glob(path))
        if fs.isdir(path):
            return sorted("s3://" + p for p in fs.find(path) if p.endswith(".tar"))
        if not fs.exists(path):
            raise ConfigError(f"{key}: {path} does not exist")
        return [path]
    if any(c in path for c in "*?["):
        return sorted(glob.glob(path))
    p = Path(path)
    if p.is_dir():
        return sorted(str(q) for q in p.rglob("*.tar"))
    if not p.exists():
        raise ConfigError(f"{key}: {path} does not exist; check the path or generate data with "
                          "`pipeline data synth --out DIR`")
    return [str(p)]


def expand_paths(spec: str, key: str = "data path") -> list[str]:
    """Shard spec -> sorted list of shard paths; an error naming the key when nothing matches."""
    out: list[str] = []
    for part in _split_specs(spec):
        for path in expand_braces(part):
            out += _expand_one(path, key)
    if not out:
        raise ConfigError(f"{key}={spec!r} matches no shard; point it at .tar files, a folder or a glob")
    return list(dict.fromkeys(out))


def check_not_empty(paths: list[str], key: str) -> None:
    """Local shards only: fail before any Ray work when not one of them holds a single tar member."""
    import tarfile

    if any(p.startswith("s3://") for p in paths):
        return  # listing members costs a read per shard on S3; the vocabulary pass reports emptiness there
    for p in paths:
        try:
            with tarfile.open(p, "r|*") as tar:
                if next(iter(tar), None) is not None:
                    return
        except (tarfile.TarError, OSError, EOFError):
            continue  # unreadable shards are the data checks' business; keep looking for a usable one
    raise ConfigError(f"{key}: the {len(paths)} shard(s) it matches hold no samples; point it at non-empty "
                      "WebDataset .tar shards")


# ------------------------------------------------------------------------------------------ Ray Data


def _read(paths: list[str], shuffle: bool):
    import ray.data

    return ray.data.read_webdataset(
        paths, decoder=None, filerename=transforms.rename_member,
        fileselect=lambda name: name.rsplit(".", 1)[-1] in ("image", "txt", "json"),
        shuffle="files" if shuffle else None,
    )


def skip_counter():
    """An actor summing skipped samples by split and reason: map tasks add to it, the driver reads it."""
    import ray

    @ray.remote(num_cpus=0)
    class SkipCounter:
        """Keys, not counts: every epoch decodes the same bad samples again, and a set counts each once."""

        def __init__(self):
            self.keys: dict[str, dict[str, set]] = {}

        def add(self, split: str, skips: dict) -> None:
            for reason, keys in skips.items():
                self.keys.setdefault(split, {}).setdefault(reason, set()).update(keys)

        def get(self) -> dict:
            return {split: {reason: sorted(keys) for reason, keys in by.items()}
                    for split, by in self.keys.items()}

    return SkipCounter.remote()


def train_dataset(paths: list[str], tokenizer: Tokenizer, data_cfg, seed: int, counter=None):
    """-> Dataset of {'image': (3,S,S) uint8, 'tokens': (L,) int64}, augmented, one caption per image
    sampled afresh every epoch."""
    size, augment, scale_min = data_cfg.image_size, data_cfg.augment, data_cfg.crop_scale_min

    def prepare(batch):
        # Fresh entropy mixed with the seed: a different crop and caption each epoch.
        rng = np.random.default_rng([seed, int.from_bytes(os.urandom(4), "little")])
        out, skips = transforms.prepare_train_batch(batch, tokenizer, size, augment, scale_min, rng)
        if counter is not None and skips:
            counter.add.remote("train", skips)
        return out

    return _read(paths, shuffle=True).map_batches(prepare, batch_size=128, batch_format="numpy")


def eval_dataset(paths: list[str], image_size: int, counter=None, split: str = "val"):
    """-> Dataset of {'key', 'image' (3,S,S) uint8, 'captions' JSON list}, unaugmented, in shard order."""

    def prepare(batch):
        out, skips = transforms.prepare_eval_batch(batch, image_size)
        if counter is not None and skips:
            counter.add.remote(split, skips)
        return out

    return _read(paths, shuffle=False).map_batches(prepare, batch_size=128, batch_format="numpy")


def build_vocabulary(paths: list[str], data_cfg) -> tuple[Tokenizer, int]:
    """Count words over every training caption with Ray Data (only .txt/.json are read into memory)
    -> (tokenizer, number of captioned samples)."""
    import ray.data

    ds = ray.data.read_webdataset(paths, decoder=None, filerename=transforms.rename_member,
                                  fileselect=lambda name: name.rsplit(".", 1)[-1] in ("txt", "json"))
    counts: Counter = Counter()
    for batch in ds.map_batches(transforms.caption_word_counts, batch_format="numpy").iter_batches(
            batch_size=None, batch_format="numpy"):
        for w, c in zip(batch["word"], batch["count"]):
            counts[str(w)] += int(c)
    n = counts.pop("", 0)
    tok = Tokenizer.from_counts(counts, data_cfg.max_tokens, data_cfg.vocab_min_count, data_cfg.vocab_max_size)
    return tok, n
