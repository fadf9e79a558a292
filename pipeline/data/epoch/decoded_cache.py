"""data.cache_decoded: every training image decoded once, kept in Ray's object store, and cropped from there
every epoch.

A shard's first reader decodes all of its rows (not only the ones its worker keeps: in the `rows` layout
the other workers need theirs too), each to its *base*: short side `base_side(data.image_size)` (a little
above the training size, as a resize-then-crop pipeline keeps; never enlarged), aspect kept. At the end of
the shard it hands the `DecodedShard` (the rows without image bytes, the base pixels in one flat array) to
a small actor, which puts it in the object store. Later reads of that shard, on any worker and node, take
it from there without opening the file: JPEG decoding, the dominant cost of a sample, happens once a run.

Crops, brightness and caption choice still come from every row's per-epoch seed (`data.formats.shards`). Whether a
row's image came from the cache or was just decoded, its view is cut from the same base, so a run is the
same whichever worker read a shard first, and a resumed run trains on exactly what it would have.

`auto` turns the cache on when the decoded training set takes under a fifth of the object store (a run on a
corpus bigger than that decodes every epoch, as with `false`). Ray only in `CacheClient` and `cache_actor`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from pipeline.data.transforms import decode_image, to_base

BASE_OVER = 8 / 7  # 224 -> 256: the margin of the classic resize-256, crop-224 pipeline
AUTO_SHARE = 0.2  # data.cache_decoded=auto: the share of the object store the decoded set may take
ASPECT = 4 / 3  # the long side a typical photo adds to a base's area, for the size estimate
CLAIM_TTL_S = 900.0  # a claim whose reader died is given to the next reader after this long
MODES = ("auto", "true", "false")


def base_side(size: int) -> int:
    """The short side training images are decoded to once, for crops of side `size`."""
    return math.ceil(size * BASE_OVER)


def estimate_bytes(samples: int, size: int) -> int:
    side = base_side(size)
    return int(samples * 3 * side * side * ASPECT)


def decide(mode: str, samples: int, size: int, store_bytes: float) -> tuple[bool, str]:
    """(cache on?, one console line) for data.cache_decoded=`mode`, `samples` training images of `size`
    px and an object store of `store_bytes`."""
    need = estimate_bytes(samples, size)
    what = f"about {_mb(need)} of decoded {base_side(size)} px images, object store {_mb(store_bytes)}"
    if mode == "false":
        return False, "training images are decoded every epoch (data.cache_decoded=false)"
    if mode == "true":
        spill = " (more than it holds: Ray spills the rest to disk)" if need > store_bytes else ""
        return True, f"training images decoded once and cached in the object store ({what}){spill}"
    if need <= AUTO_SHARE * store_bytes:
        return True, f"training images decoded once and cached in the object store ({what})"
    return False, (f"training images are decoded every epoch: {what}, more than data.cache_decoded=auto's "
                   f"{AUTO_SHARE:.0%} (set data.cache_decoded=true to cache them anyway)")


def _mb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass
class DecodedShard:
    """One shard's rows in file order as `shards.shard_rows` gives them, each "image" replaced by the index
    of its base in `shapes` (an int), the skip reason its decoding gave (a str), or what the file held where
    nothing was decoded (None, b"")."""
    rows: list[dict]
    pixels: np.ndarray  # (sum of h*w*3,) uint8
    offsets: np.ndarray  # (n+1,) int64 into pixels
    shapes: np.ndarray  # (n, 2) int32: h, w

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)

    def image(self, j: int) -> np.ndarray:
        h, w = self.shapes[j]
        return self.pixels[self.offsets[j]:self.offsets[j + 1]].reshape(h, w, 3)

    def iter_rows(self) -> Iterator[dict]:
        """The shard's rows again, "image" being the base (h, w, 3) array, a skip reason, None or b""."""
        for row in self.rows:
            j = row["image"]
            yield dict(row, image=self.image(j)) if isinstance(j, int) else row


@dataclass
class ShardDecoder:
    """Decodes a shard's rows to their bases as they stream past, and keeps them for a `DecodedShard`."""
    side: int
    interpolation: str = "bilinear"
    rows: list[dict] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)

    def decode(self, rows: Iterator[dict]) -> Iterator[dict]:
        """rows with image bytes -> the same rows with "image" the base array (or the reason it has none)."""
        for row in rows:
            raw, kept = row["image"], row["image"]
            if not row["problem"] and raw is not None and len(raw):
                try:
                    raw = to_base(decode_image(bytes(raw), self.side), self.side, self.interpolation)
                    kept = len(self.images)
                    self.images.append(raw)
                except ValueError:
                    raw = kept = "corrupt_image"
                except OverflowError:
                    raw = kept = "oversized_image"
            self.rows.append(dict(row, image=kept))
            yield dict(row, image=raw)

    def finish(self) -> DecodedShard:
        sizes = [a.size for a in self.images]
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(sizes)
        pixels = np.concatenate([a.reshape(-1) for a in self.images]) if self.images else np.zeros(0, np.uint8)
        shapes = np.array([a.shape[:2] for a in self.images], dtype=np.int32).reshape(-1, 2)
        return DecodedShard(self.rows, pixels, offsets, shapes)


class CacheClient:
    """A read task's side of the cache actor: every call bounded, and a lost actor taken as an empty cache
    (the read then decodes, as without a cache)."""

    def __init__(self, actor):
        self.actor = actor

    def _call(self, method: str, *args, default=None):
        import ray

        try:
            return ray.get(getattr(self.actor, method).remote(*args), timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.ObjectLostError):
            return default

    def lookup(self, shard: str) -> DecodedShard | None:
        import ray

        found = self._call("lookup", shard)
        if not found:
            return None
        try:
            return ray.get(found[0], timeout=120)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return None  # lost with a node: decoded again by whoever claims it next

    def claim(self, shard: str) -> bool:
        return bool(self._call("claim", shard, default=False))

    def store(self, shard: str, decoded: DecodedShard) -> None:
        self._call("store", shard, decoded)

    def release(self, shard: str) -> None:
        self._call("release", shard)


def cache_actor(budget_bytes: float):
    """The actor holding the run's decoded shards (owned by it, so they live as long as it does), pinned to
    the driver's node like the skip counter. `budget_bytes`: shards beyond it are not kept."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as NodeAffinity

    @ray.remote(num_cpus=0)
    class DecodedCache:
        def __init__(self, budget: float):
            self.refs: dict[str, ray.ObjectRef] = {}
            self.claims: dict[str, float] = {}
            self.refused: set[str] = set()  # over the budget: never claimed again
            self.budget, self.used = budget, 0

        def lookup(self, shard: str):
            ref = self.refs.get(shard)
            return [ref] if ref is not None else None  # in a list: the caller gets the reference, not the value

        def claim(self, shard: str) -> bool:
            now = time.monotonic()
            if shard in self.refs or shard in self.refused or now - self.claims.get(shard, -CLAIM_TTL_S) < CLAIM_TTL_S:
                return False
            self.claims[shard] = now
            return True

        def store(self, shard: str, decoded) -> None:
            self.claims.pop(shard, None)
            if shard in self.refs:
                return
            if self.used + decoded.nbytes > self.budget:
                self.refused.add(shard)
                return
            self.refs[shard] = ray.put(decoded)
            self.used += decoded.nbytes

        def release(self, shard: str) -> None:
            self.claims.pop(shard, None)

        def stats(self) -> dict:
            return {"shards": len(self.refs), "bytes": self.used, "refused": len(self.refused)}

    here = ray.get_runtime_context().get_node_id()
    return DecodedCache.options(max_restarts=-1, max_task_retries=-1,
                                scheduling_strategy=NodeAffinity(here, soft=False)).remote(budget_bytes)


def start(data_cfg, samples: int):
    """data.cache_decoded: the run's decoded-image cache actor, or None; says which on the console."""
    import ray

    if data_cfg.decode == "gpu":
        print("[data] training images travel as JPEG bytes and are decoded on each worker's device (data.decode=gpu)")
        return None
    store = float(ray.cluster_resources().get("object_store_memory", 0))
    on, note = decide(data_cfg.cache_decoded, samples, data_cfg.image_size, store)
    print(f"[data] {note}")
    if not on:
        return None
    return cache_actor(float("inf") if data_cfg.cache_decoded == "true" else 1.5 * AUTO_SHARE * store)
