"""`pipeline data inspect PATH`: sample counts, the members each sample carries, caption statistics and
unreadable samples, computed with Ray Data over the shards."""
from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.data import transforms


def _scan(batch: dict) -> dict:
    """One row per sample: which members it has, its caption count and length, and why it is unusable."""
    members, n_caps, words, reason = [], [], [], []
    for i, (key, raw, txt, meta) in enumerate(transforms.iter_samples(batch)):
        members.append(",".join(c for c in ("image", "txt", "json") if isinstance(batch[c][i], (bytes, str))))
        caps = transforms.parse_captions(txt, meta)
        n_caps.append(len(caps))
        words.append(float(np.mean([len(c.split()) for c in caps])) if caps else 0.0)
        skips: dict = {}
        transforms.decode_or_skip(key, raw, caps, skips)
        reason.append(next(iter(skips), "") + (f":{key}" if skips else ""))
    return {"members": np.array(members, dtype=object), "n_captions": np.array(n_caps),
            "caption_words": np.array(words), "problem": np.array(reason, dtype=object)}


def inspect_shards(paths: list[str], show: int = 20) -> str:
    from pipeline.data.ingest import _read

    members, problems = Counter(), []
    n_caps, words = [], []
    for b in _read(paths, shuffle=False).map_batches(_scan, batch_format="numpy").iter_batches(
            batch_size=None, batch_format="numpy"):
        members.update(b["members"].tolist())
        n_caps += b["n_captions"].tolist()
        words += b["caption_words"].tolist()
        problems += [p for p in b["problem"].tolist() if p]
    n = len(n_caps)
    by_reason = Counter(p.split(":", 1)[0] for p in problems)
    lines = [f"shards: {len(paths)}", f"samples: {n}", f"usable: {n - len(problems)}",
             "members per sample: " + ", ".join(f"{k or '(none)'} x{v}" for k, v in members.most_common()),
             f"captions per sample: mean {np.mean(n_caps):.2f}, min {min(n_caps)}, max {max(n_caps)}" if n else "",
             f"words per caption: mean {np.mean(words):.1f}, max {max(words):.0f}" if n else "",
             "unreadable: " + (", ".join(f"{r} x{c}" for r, c in by_reason.items()) or "none")]
    lines += [f"  {p}" for p in problems[:show]]
    if len(problems) > show:
        lines.append(f"  ... and {len(problems) - show} more")
    return "\n".join(line for line in lines if line)
