"""Skipped samples, counted per reason with a bounded sample of example keys per reason.

A crawl with 30% failed downloads has hundreds of millions of bad keys; keeping each one (as sets in one
actor) grows without bound and puts that actor on every batch's path. A `SkipTally` holds counts and, per
reason, the first `EXAMPLES` keys in stream order: small enough to ride along with the data, travel in a
checkpoint and be merged across workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data.formats.shards import NOT_SAMPLES

EXAMPLES = 8  # example keys kept per reason: enough to find the files, few enough for every checkpoint


@dataclass
class SkipTally:
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, keys: list[str], n: int | None = None) -> None:
        """Count `n` (default len(keys)) skips for `reason`, keeping the first example keys."""
        self.counts[reason] = self.counts.get(reason, 0) + (len(keys) if n is None else n)
        kept = self.examples.setdefault(reason, [])
        kept += list(keys[:max(0, EXAMPLES - len(kept))])

    def add_keys(self, skips: dict[str, list[str]]) -> None:
        """Add a batch's {reason: keys} (what `transforms.prepare_*_batch` returns)."""
        for reason, keys in skips.items():
            self.add(reason, keys)

    def merge(self, other: SkipTally) -> SkipTally:
        for reason, n in other.counts.items():
            self.add(reason, other.examples.get(reason, []), n)
        return self

    def skipped_samples(self) -> int:
        """Unusable samples: rows that are not samples (failed downloads, cut or unreadable shards) left out."""
        return sum(n for r, n in self.counts.items() if r not in NOT_SAMPLES)

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())),
                "examples": {r: self.examples.get(r, []) for r in sorted(self.counts)}}

    @classmethod
    def from_dict(cls, d: dict | None) -> SkipTally:
        d = d or {}
        return cls(dict(d.get("counts", {})), {r: list(k) for r, k in d.get("examples", {}).items()})

    @classmethod
    def from_keys(cls, by_reason: dict[str, list[str]]) -> SkipTally:
        out = cls()
        out.add_keys(by_reason)
        return out

    @classmethod
    def merged(cls, tallies) -> SkipTally:
        out = cls()
        for t in tallies:
            out.merge(t if isinstance(t, SkipTally) else cls.from_dict(t))
        return out


class SkipLog:
    """Where a job's skipped samples are recorded, by split and reason: the one object handed to every pass that
    decodes samples, read once the passes are done. It keeps key sets: an evaluation pass may decode the same bad
    sample twice, and a set counts it once.

    Passes in the driver (a small gallery, `local_passes`) record into the log itself. A pass that Ray runs in
    other processes (Ray Data's tasks) is handed `shared()`, which starts the log's actor on first use: on the
    driver's node (whose loss ends the job anyway), so that losing a worker node never takes the log with it,
    restarting in place if its process dies (its tally starts again). Most evaluations then start no actor, a
    process of its own. Bookkeeping never fails a job: an actor that cannot answer is skipped, and reads as
    empty."""

    def __init__(self, actor=None):
        self.actor = actor
        self.local: dict[str, dict[str, set]] = {}

    @classmethod
    def start(cls) -> SkipLog:
        return cls()

    def shared(self) -> SkipLog:
        """This log, with its actor started: what goes into Ray tasks (a copy without one would count alone)."""
        if self.actor is None:
            self.actor = _counter_actor()
        return self

    def __getstate__(self) -> dict:
        if self.actor is None:
            raise RuntimeError("a SkipLog goes to Ray tasks through shared(), or its copies' counts are lost")
        return {"actor": self.actor, "local": {}}

    def record(self, split: str, skips: dict[str, list[str]]) -> None:
        """Record a batch's {reason: keys}; through the actor, wait for it to take them: a read right after the
        dataset finishes then includes every batch."""
        if self.actor is None:
            _add(self.local, split, skips)
            return
        import ray

        try:
            ray.get(self.actor.add.remote(split, skips), timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass

    def read(self) -> dict[str, dict[str, list[str]]]:
        """{split: {reason: sorted keys}}; the actor's part is empty if it was lost (the report then says none)."""
        by: dict[str, dict[str, set]] = {}
        for split, reasons in self.local.items():
            _add(by, split, reasons)
        if self.actor is not None:
            import ray

            try:
                for split, reasons in ray.get(self.actor.get.remote(), timeout=60).items():
                    _add(by, split, reasons)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
        return {split: {reason: sorted(keys) for reason, keys in reasons.items()} for split, reasons in by.items()}


def _add(by: dict[str, dict[str, set]], split: str, skips: dict) -> None:
    for reason, keys in skips.items():
        by.setdefault(split, {}).setdefault(reason, set()).update(keys)


def _counter_actor():
    """The skip log's actor, pinned to this (the driver's) node, restarted in place if its process dies."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as NodeAffinity

    @ray.remote(num_cpus=0)
    class SkipCounter:
        def __init__(self):
            self.keys: dict[str, dict[str, set]] = {}

        def add(self, split: str, skips: dict) -> None:
            _add(self.keys, split, skips)

        def get(self) -> dict:
            return self.keys

    here = ray.get_runtime_context().get_node_id()
    return SkipCounter.options(max_restarts=-1, max_task_retries=-1,
                               scheduling_strategy=NodeAffinity(here, soft=False)).remote()
