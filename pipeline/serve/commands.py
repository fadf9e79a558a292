"""`pipeline search` (one query, printed with each hit's caption; `--out` writes the hit images) and
`pipeline serve` (the index behind Ray Serve until Ctrl-C): their checks, which come before any model or Ray
work, and what they print."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from pipeline import storage
from pipeline.config import ConfigError


def _reranker(rerank: str, index: str, checkpoint: str | None = None):
    from pipeline.index.searcher import read_meta
    from pipeline.index.sharded import index_checkpoint
    from pipeline.rerank.job import load

    try:
        return load(rerank, checkpoint or index_checkpoint(index, read_meta(index)))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"--rerank {rerank}: {e}") from None


def search(args) -> None:
    from pipeline.index.searcher import Searcher
    from pipeline.preflight import query_image

    if args.k < 1:
        raise ConfigError(f"--k {args.k}: ask for at least 1 result")
    image = query_image(args.image) if args.image else None
    storage.configure(args.endpoint_url)
    kw = {"reranker": _reranker(args.rerank, args.index) if args.rerank else None, "rerank_k": args.rerank_k}
    if args.distributed:
        from pipeline import cluster

        cluster.connect(args.address, args.command)
        searcher = Searcher.open(args.index, distributed=True, **kw)
        _answer(searcher, args, image)
    else:
        with storage.local_copy(args.index) as index_dir:  # an s3:// index is fetched first
            _answer(Searcher.open(index_dir, **kw), args, image)


def _answer(searcher, args, image) -> None:
    hits = searcher.text([args.text], args.k)[0] if args.text is not None else searcher.images([image], args.k)[0]
    if args.out:
        written = write_hit_images(searcher, hits, Path(args.out))
    if args.json:
        print(json.dumps(hits, indent=2))
    else:
        for h in hits:
            head = f"  (re-ranked {h['rerank_score']:.3f})" if "rerank_score" in h else ""
            where = h.get("path") or h["key"]
            print(f"{h['rank']:>3}  {h['score']:.3f}{head}  {h['caption'] or '(no caption)'}  [{where}]")
    if args.out and not args.json:  # --json: stdout stays one JSON document (hits.json has the files)
        print(f"hit images: {args.out} ({written} of {len(hits)} written; hits.json lists them)")


def write_hit_images(searcher, hits: list[dict], out: Path) -> int:
    """Each hit's gallery image as RANK_KEY.<ext> in `out`, and hits.json (each hit with its `file`, or the
    `error` that kept it from being read). -> how many were written."""
    lookup = searcher.gallery_images()
    out.mkdir(parents=True, exist_ok=True)
    listed, written = [], 0
    for h in hits:
        try:
            data = lookup.image_bytes(h["key"])
        except (KeyError, OSError) as e:
            listed.append({**h, "error": f"not readable: {e}"})
            continue
        name = f"{h['rank']:03d}_{h['key'].replace('/', '_')}{_suffix(data)}"
        (out / name).write_bytes(data)
        listed.append({**h, "file": name})
        written += 1
    (out / "hits.json").write_text(json.dumps(listed, indent=2))
    return written


def _suffix(data: bytes) -> str:
    return {b"\x89PNG": ".png", b"RIFF": ".webp", b"GIF8": ".gif"}.get(data[:4], ".jpg")


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(args) -> None:
    """Check the flags and the index, start (or join) Ray, deploy, print where it answers, wait for Ctrl-C."""
    from pipeline.index.searcher import read_meta

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: give a TCP port from 1 to 65535")
    if args.replicas < 1:
        raise ConfigError(f"--replicas {args.replicas}: run at least 1 replica")
    storage.configure(args.endpoint_url)
    try:
        meta = read_meta(args.index)
    except FileNotFoundError as e:
        raise ConfigError(f"--index {args.index}: {e}") from None
    if args.checkpoint and not storage.exists(args.checkpoint):
        raise ConfigError(f"--checkpoint {args.checkpoint} does not exist")
    if args.rerank:
        _reranker(args.rerank, args.index, args.checkpoint)  # refused here, not inside a replica
    from pipeline import cluster
    from pipeline.index.sharded import index_checkpoint
    from pipeline.rerank.job import run_head
    from pipeline.serve.app import ServeArgs, serve_index

    own_head = not args.rerank and run_head(args.checkpoint or index_checkpoint(args.index, meta))

    where = cluster.connect(args.address, "serve")
    # `kill` or a job's stop ends it as Ctrl-C does, Serve shut down even mid-deploy (set after ray.init, which
    # puts a handler of its own there).
    signal.signal(signal.SIGTERM, _stop)
    from ray import serve as ray_serve

    try:
        started = time.perf_counter()
        serve_index(ServeArgs(index=args.index, checkpoint=args.checkpoint, rerank=args.rerank,
                              rerank_k=args.rerank_k, endpoint_url=args.endpoint_url),
                    args.host, args.port, args.replicas)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        print(f"serving {args.index} ({meta['n_images']} images, {meta['n_captions']} captions) with "
              f"{args.replicas} replica(s) on the {where} Ray, up in {time.perf_counter() - started:.1f} s\n"
              f"  search page: http://{host}:{args.port}/\n"
              f"  API:         POST http://{host}:{args.port}/search  {{\"text\": \"...\", \"k\": 10}}\n"
              + (f"  re-ranker:   {args.rerank}\n" if args.rerank else
                 "  re-ranker:   the run's own, trained with the towers (requests ask for it with \"rerank\": true)\n"
                 if own_head else "")
              + "Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    finally:
        ray_serve.shutdown()
