"""Skipped samples, counted per reason with a bounded sample of example keys per reason.

A crawl with 30% failed downloads has hundreds of millions of bad keys; keeping each one (as sets in one
actor) grows without bound and puts that actor on every batch's path. A `SkipTally` holds counts and, per
reason, the first `EXAMPLES` keys in stream order: small enough to ride along with the data, travel in a
checkpoint and be merged across workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data.shards import NOT_SAMPLES

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


def count_skips(counter, split: str, skips: dict) -> None:
    """Record a batch's skipped keys and wait for the counter to take them: a count read right after the
    dataset finishes then includes every batch. A counter that cannot answer is no reason to fail the batch."""
    import ray

    try:
        ray.get(counter.add.remote(split, skips), timeout=60)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        pass
