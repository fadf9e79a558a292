"""`pipeline serve` under load on loopback, against calling the same encoder and index in this process: what the
HTTP service costs a query, as ratios.

    .venv/bin/python bench/serve.py                                  # runs/demo/index (`make demo` writes it)
    .venv/bin/python bench/serve.py --index DIR --requests 500 --concurrency 1,8 --rounds 1

(A) in process: `Searcher.text([caption], k)` one query at a time (latency), and `Searcher.text(32 captions)`
    (the batched rate: what a replica's `serve.batch` can reach at best); image queries the same from the
    stored JPEG bytes (decoded here, as the service decodes an upload).
(B) served: one replica on a local Ray, `POST /search` JSON (text) or multipart (image) from N client threads,
    each on its own keep-alive connection, `--requests` requests a concurrency;
(C) Serve's floor: the same text requests at concurrency 1 to a deployment that only reads them and answers {}.
A and B alternate, round by round. The client threads run on the same cores as the service, as a load
generator on the machine would. Prints p50/p99 latency and QPS, the p50 overhead at concurrency 1 (B − A) and
QPS at the highest concurrency over the in-process batched rate.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def in_process(searcher, texts, images, n: int, k: int) -> dict:
    """-> {kind: {"p50_ms", "p99_ms", "batched_qps"}} for text and image queries."""
    import io

    from PIL import Image

    def one_image(data):
        return searcher.images([Image.open(io.BytesIO(data)).convert("RGB")], k)

    def batch_images(chunk):
        return searcher.images([Image.open(io.BytesIO(d)).convert("RGB") for d in chunk], k)

    out = {}
    for kind, queries, one, batch in (("text", texts, lambda q: searcher.text([q], k), lambda c: searcher.text(c, k)),
                                      ("image", images, one_image, batch_images)):
        lat = []
        for i in range(n):
            t = time.perf_counter()
            one(queries[i % len(queries)])
            lat.append(time.perf_counter() - t)
        done, t = 0, time.perf_counter()
        while done < n:
            batch([queries[(done + j) % len(queries)] for j in range(32)])
            done += 32
        out[kind] = {"p50_ms": 1e3 * percentile(lat, 50), "p99_ms": 1e3 * percentile(lat, 99),
                     "batched_qps": done / (time.perf_counter() - t)}
    return out


def _body(kind: str, query, k: int) -> tuple[bytes, str]:
    if kind == "text":
        return json.dumps({"text": query, "k": k}).encode(), "application/json"
    b = uuid.uuid4().hex
    return (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + query + \
        f'\r\n--{b}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n--{b}--\r\n'.encode(), \
        f"multipart/form-data; boundary={b}"


def served(port: int, kind: str, queries, n: int, concurrency: int, k: int, path: str = "/search") -> dict:
    """n requests from `concurrency` threads -> {"p50_ms", "p99_ms", "qps", "errors"}."""
    lat, errors, lock = [], [0], threading.Lock()
    bodies = [_body(kind, q, k) for q in queries]

    def client(share: int, offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(share):
            body, ctype = bodies[(offset + i) % len(bodies)]
            t = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": ctype})
            r = conn.getresponse()
            r.read()
            with lock:
                lat.append(time.perf_counter() - t)
                errors[0] += r.status != 200
        conn.close()

    shares = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
    threads = [threading.Thread(target=client, args=(s, 97 * i)) for i, s in enumerate(shares)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return {"p50_ms": 1e3 * percentile(lat, 50), "p99_ms": 1e3 * percentile(lat, 99), "qps": n / wall,
            "errors": errors[0]}


def _deploy_floor() -> None:
    """Serve's own cost on this machine: a deployment at /floor that reads the body and answers `{}`."""
    from ray import serve
    from starlette.responses import JSONResponse

    @serve.deployment(ray_actor_options={"num_cpus": 1})
    class Floor:
        async def __call__(self, request):
            await request.body()
            return JSONResponse({})

    serve.run(Floor.bind(), name="floor", route_prefix="/floor", logging_config={"enable_access_log": False})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", default=str(ROOT / "runs" / "demo" / "index"))
    ap.add_argument("--requests", type=int, default=2000, help="requests per concurrency and query kind")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    if not (Path(args.index) / "meta.json").exists():
        sys.exit(f"{args.index} holds no index: run `make demo` first, or pass --index")
    levels = [int(c) for c in args.concurrency.split(",")]

    from pipeline import cluster
    from pipeline.index.searcher import Searcher
    from pipeline.serve.app import ServeArgs, serve_index

    searcher = Searcher.open(args.index)
    texts = [r["caption"] for r in searcher.side("captions").rows[:500]]
    lookup = searcher.gallery_images()
    images = [lookup.image_bytes(r["key"]) for r in searcher.side("images").rows[:200]]
    searcher.text(texts[:32]), in_process(searcher, texts, images, 5, args.k)  # warm
    cluster.connect(None, "bench-serve")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_index(ServeArgs(index=args.index), "127.0.0.1", port, replicas=1)
    _deploy_floor()
    served(port, "text", texts, 100, 4, args.k)  # warm the proxy and the replica
    rows: dict = {}
    for r in range(args.rounds):
        a = in_process(searcher, texts, images, min(args.requests, 500), args.k)
        rows.setdefault(("text", "floor"), []).append(served(port, "text", texts, args.requests, 1, args.k, "/floor"))
        for kind in ("text", "image"):
            rows.setdefault((kind, "in-process"), []).append(a[kind])
            for c in levels:
                rows.setdefault((kind, c), []).append(served(port, kind, texts if kind == "text" else images,
                                                             args.requests, c, args.k))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    med = {key: {m: statistics.median(x[m] for x in runs) for m in runs[0]} for key, runs in rows.items()}
    print(f"\n{args.index}: {searcher.sizes['images']} images, {searcher.sizes['captions']} captions, "
          f"k={args.k}, {args.requests} requests a level, median of {args.rounds} rounds\n")
    print("| query | client | p50 ms | p99 ms | QPS | errors |\n|---|---|---:|---:|---:|---:|")
    f = med[("text", "floor")]
    print(f"| text | served, a deployment that only answers `{{}}`, concurrency 1 | {f['p50_ms']:.2f} | "
          f"{f['p99_ms']:.2f} | {f['qps']:.0f} | {f['errors']:.0f} |")
    for kind in ("text", "image"):
        a = med[(kind, "in-process")]
        print(f"| {kind} | in process, one at a time | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} | "
              f"{1e3 / a['p50_ms']:.0f} | – |")
        print(f"| {kind} | in process, batches of 32 | – | – | {a['batched_qps']:.0f} | – |")
        for c in levels:
            b = med[(kind, c)]
            print(f"| {kind} | served, concurrency {c} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | {b['qps']:.0f} | "
                  f"{b['errors']:.0f} |")
    print()
    for kind in ("text", "image"):
        a = med[(kind, "in-process")]
        if 1 in levels:
            print(f"{kind}: serving overhead at concurrency 1: {med[(kind, 1)]['p50_ms'] - a['p50_ms']:.2f} ms p50")
        top = max(levels)
        print(f"{kind}: QPS at concurrency {top} / in-process batched rate: "
              f"{med[(kind, top)]['qps'] / a['batched_qps']:.2f}")
    from ray import serve

    serve.shutdown()


if __name__ == "__main__":
    main()
