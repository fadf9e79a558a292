"""W&B's run files read back: `run-<id>.wandb` is a LevelDB-style log (32 KiB blocks, each record a 7-byte
header -- checksum, length, type -- and a piece of a `Record` protobuf, W&B's own schema) after a 7-byte file
header. W&B's Python package no longer ships a reader of its own (the Go core writes the files), so this one
is small and exact about the framing; the records are parsed with W&B's protobuf classes.

Used for a resumed offline run (the steps its earlier attempts already wrote) and by the tests."""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    """Every whole `Record` in one run file, in order; a record cut short by a kill ends the list."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file (it starts {data[:4]!r})")
    out, pos, pieces = [], HEADER, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        body = data[pos + 7:pos + 7 + length]
        if len(body) < length or kind not in (FULL, FIRST, MIDDLE, LAST):
            break
        pos += 7 + length
        pieces = [body] if kind in (FULL, FIRST) else pieces + [body]
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(b"".join(pieces))
            out.append(rec)
            pieces = []
    return out


def history(path: Path) -> list[dict]:
    """The run file's history rows: [{'_step': n, key: value, ...}, ...] in the order they were logged."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def run_files(folder: Path, run_id: str) -> list[Path]:
    """Every attempt's run file of `run_id` under W&B's folder (offline-run-<time>-<id>/run-<id>.wandb), oldest
    first."""
    return sorted(Path(folder).glob(f"*-{run_id}/run-{run_id}.wandb"))


def offline_steps(folder: Path, run_id: str) -> dict[str, int]:
    """{metric: the last step any attempt of `run_id` so far wrote of it}."""
    steps: dict[str, int] = {}
    for path in run_files(folder, run_id):
        for row in history(path):
            step = int(row.get("_step", -1))
            for key in row:
                if not key.startswith("_"):
                    steps[key] = max(steps.get(key, -1), step)
    return steps
