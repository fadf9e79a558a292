"""Which training rows each worker reads in an epoch, in what order, and where a resumed epoch picks up.

Ray Data's streaming split hands blocks to whichever worker asks first, so no record says which samples a
worker trained; a run stopped mid-epoch could only start the epoch again. Here every worker reads its own
seeded share of the epoch instead:
- `shards` layout (enough shards): a per-epoch permutation of the shard list, dealt to the workers so their
  sample counts stay level (greedy on known counts, else round robin). Each shard is read by one worker.
- `rows` layout (fewer shards than workers x readers: tiny or badly sharded data): every worker reads every
  shard and keeps the rows whose index in the shard's (permuted) order falls to its rank. Exact balance, at
  the price of reading everything once per worker.
A row's *position* is `index of its shard in the worker's list << 32 | its index in that shard's shuffled
order`: the same in every run of the epoch, and increasing along the worker's stream. A checkpoint keeps a
`Cursor` per worker; the resumed reader skips whole shards before it and, inside the shard it stopped in,
every row the cursor marks done, before any image is decoded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROW_BITS = 32  # rows per shard < 2**32; shards per worker and epoch < 2**21 (positions stay exact in JSON)


def position(shard_index: int, row: int) -> int:
    return (shard_index << ROW_BITS) | row


def shard_of(pos: int) -> int:
    return pos >> ROW_BITS


def layout(n_shards: int, world: int, readers: int) -> str:
    """'shards' when every worker can keep `readers` shards of its own in flight, else 'rows'."""
    return "shards" if n_shards >= world * readers else "rows"


def unused_by_deal(paths: list[str], counts: dict[str, int] | None, world: int, seed: int) -> int:
    """Samples a shard deal leaves untrained each epoch (every worker stops with the smallest share); 0 when
    the counts are unknown (then shards are taken to be alike)."""
    if not counts or any(p not in counts for p in paths):
        return 0
    loads = [sum(counts[p] for p in share) for share in deal_shards(paths, counts, world, seed, 1)]
    return sum(loads) - world * min(loads)


def choose_layout(paths: list[str], counts: dict[str, int] | None, world: int, readers: int, seed: int,
                  tolerance: float = 0.02) -> str:
    """'shards' where there are enough shards and dealing them whole wastes at most `tolerance` of an epoch;
    else 'rows' (few or uneven shards: typically small data, where reading every shard per worker is cheap)."""
    if layout(len(paths), world, readers) == "rows":
        return "rows"
    total = sum(counts.get(p, 0) for p in paths) if counts else 0
    return "rows" if total and unused_by_deal(paths, counts, world, seed) > tolerance * total else "shards"


def deal_shards(paths: list[str], counts: dict[str, int] | None, world: int, seed: int, epoch: int
                ) -> list[list[str]]:
    """The epoch's shards per rank: a seeded permutation of `paths` (the same on every worker and in every
    run), each shard going to the rank with the fewest samples so far (counts known) or round robin."""
    rng = np.random.default_rng([seed, epoch, 7919])
    order = [paths[i] for i in rng.permutation(len(paths))]
    out: list[list[str]] = [[] for _ in range(world)]
    if not counts or any(p not in counts for p in paths):
        for i, p in enumerate(order):
            out[i % world].append(p)
        return out
    load = [0] * world
    for p in order:
        r = min(range(world), key=lambda w: (load[w], w))
        out[r].append(p)
        load[r] += counts[p]
    return out


@dataclass(frozen=True)
class WorkerShare:
    """What one worker reads in one epoch: its shards in order, and which rows of each it keeps."""
    shards: list[str]
    stride: int = 1  # rows layout: keep the rows whose shuffled index % stride == offset
    offset: int = 0


@dataclass(frozen=True)
class Resampling:
    """data.sampling=resampled: each worker draws its epoch's shards with replacement, source by source
    weight, until they hold about `quota` samples (its share of train.samples_per_epoch, plus room for skips).
    `sources[i]`: the source of paths[i]; `weights[s]`: source s's share of the samples drawn."""
    sources: list[int]
    weights: list[float]
    quota: int
    mean: float = 1.0  # the samples a shard is taken to hold where the counts are unknown

    def to_dict(self) -> dict:
        return {"sources": self.sources, "weights": self.weights, "quota": self.quota, "mean": self.mean}

    @classmethod
    def from_dict(cls, d: dict | None) -> Resampling | None:
        return cls(list(d["sources"]), list(d["weights"]), int(d["quota"]), float(d.get("mean", 1.0))) if d else None


def draw_shards(paths: list[str], counts: dict[str, int] | None, plan: Resampling, seed: int, epoch: int,
                rank: int) -> list[str]:
    """One worker's resampled epoch list: a source drawn by weight (per sample: see below), then one of its
    shards (by sample count where counts are known, so every sample of a source is equally likely; else
    uniformly), repeated until the list holds `plan.quota` samples. Seeded by (seed, epoch, rank): a resumed run draws the same list.
    A shard without a count is taken to hold `plan.mean` samples (the data's count over its shards)."""
    rng = np.random.default_rng([seed, epoch, rank, 15485863])
    known = bool(counts) and all(p in counts for p in paths)
    size = np.array([counts[p] for p in paths] if known else [1] * len(paths), dtype=np.float64)
    members = [np.flatnonzero(np.asarray(plan.sources) == s) for s in range(len(plan.weights))]
    live = [s for s, m in enumerate(members) if len(m) and size[m].sum() > 0]
    # A draw of source s brings sum(c^2)/sum(c) samples on average (its shards picked by size c): dividing
    # its weight by that makes the weights the shares of samples, not of shard draws.
    w = np.array([plan.weights[s] * size[members[s]].sum() / (size[members[s]] ** 2).sum() for s in live])
    out: list[str] = []
    held = 0.0
    while held < plan.quota:
        s = live[rng.choice(len(live), p=w / w.sum())]
        m = members[s]
        i = int(m[rng.choice(len(m), p=size[m] / size[m].sum())])
        out.append(paths[i])
        held += size[i] if known else max(1.0, plan.mean)
    return out


def mix_targets(sources: list[dict], sampling: str, source_samples: list[int] | None) -> list[float] | None:
    """Each source's expected share of an epoch: its weight (resampled), else its share of the samples
    (an epoch pass reads each once; None when the counts are unknown)."""
    if sampling == "resampled":
        w = [s["weight"] for s in sources]
    elif source_samples and sum(source_samples):
        w = list(source_samples)
    else:
        return None
    return [x / sum(w) for x in w]


def mix_metrics(names: list[str], per_worker: list[list[int]], targets: list[float] | None) -> dict:
    """The realised mix of an epoch: samples trained from each source (summed over the workers' counts),
    their share and the share expected (`mix_targets`). {} for a single source."""
    if len(names) < 2:
        return {}
    n = np.sum(np.asarray(per_worker, dtype=np.int64), axis=0)  # (sources,)
    total = max(1, int(n.sum()))
    out = {}
    for i, (name, k) in enumerate(zip(names, n.tolist())):
        out |= {f"data/mix/{name}": k / total, f"data/mix_samples/{name}": k}
        if targets:
            out[f"data/mix_target/{name}"] = targets[i]
    return out


def describe_mix(names: list[str], metrics: dict) -> str:
    """'a 74.9% (expected 75.0%), b 25.1% (25.0%)' for the console."""
    parts = []
    for i, name in enumerate(names):
        want = metrics.get(f"data/mix_target/{name}")
        parts.append(f"{name} {100 * metrics[f'data/mix/{name}']:.1f}%" +
                     (f" ({'expected ' if i == 0 else ''}{100 * want:.1f}%)" if want is not None else ""))
    return ", ".join(parts)


def worker_share(paths: list[str], counts: dict[str, int] | None, world: int, rank: int, kind: str,
                 seed: int, epoch: int, resampling: Resampling | None = None) -> WorkerShare:
    """This rank's share of `epoch` in the `kind` of layout (see choose_layout; the driver picks it once)."""
    if resampling is not None:
        return WorkerShare(draw_shards(paths, counts, resampling, seed, epoch, rank))
    if kind == "rows":
        rng = np.random.default_rng([seed, epoch, 7919])
        return WorkerShare([paths[i] for i in rng.permutation(len(paths))], stride=world, offset=rank)
    return WorkerShare(deal_shards(paths, counts, world, seed, epoch)[rank])


@dataclass
class Cursor:
    """Where a worker's epoch stands: every position below `next` is done (trained or counted as skipped)
    unless it is `pending` (read, not yet trained: in the shuffle buffer or a partial batch); positions at or
    above `next` are still to read, except those in `done` (trained from the prepared batch `next` starts)."""
    next: int = 0
    pending: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)

    def first_shard(self) -> int:
        """The first shard the resumed reader must open."""
        return shard_of(min(self.pending | {self.next}))

    def to_dict(self) -> dict:
        return {"next": self.next, "pending": sorted(self.pending), "done": sorted(self.done)}

    @classmethod
    def from_dict(cls, d: dict | None) -> Cursor:
        d = d or {}
        return cls(int(d.get("next", 0)), set(d.get("pending", ())), set(d.get("done", ())))


@dataclass(frozen=True)
class RowFilter:
    """Picklable row filter that read tasks apply before decoding: this worker's rows (rows layout) that the
    cursor has not marked done."""
    stride: int = 1
    offset: int = 0
    next: int = 0
    pending: frozenset = frozenset()
    done: frozenset = frozenset()

    @classmethod
    def of(cls, share: WorkerShare, cursor: Cursor | None) -> RowFilter:
        c = cursor or Cursor()
        return cls(share.stride, share.offset, c.next, frozenset(c.pending), frozenset(c.done))

    def keeps(self, shard_index: int, row: int) -> bool:
        if row % self.stride != self.offset:
            return False
        pos = position(shard_index, row)
        if pos >= self.next:
            return pos not in self.done
        return pos in self.pending


def sample_shards(paths: list[str], counts: dict[str, int], cap: int, seed: int) -> list[str]:
    """The shards whose captions teach the vocabulary: a seeded permutation's prefix holding at least `cap`
    samples (all of them when cap is 0). Whole shards, in a fixed order, so every run and every trial of a
    sweep learns the same vocabulary; reading stops after about `cap` samples, whatever the corpus size."""
    if not cap:
        return list(paths)
    rng = np.random.default_rng([seed, 104729])
    out, total = [], 0
    for i in rng.permutation(len(paths)):
        if total >= cap:
            break
        out.append(paths[i])
        total += counts.get(paths[i], 0)
    return sorted(out)
