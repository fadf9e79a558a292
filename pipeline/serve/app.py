"""The Ray Serve deployment: one `SearchService` replica holds the query encoders, the indexes and the
gallery's keys and captions (a `Searcher`), and answers

    POST /search        {"text": "...", "k": 10, "rerank": false} or an image (multipart, or base64 in JSON)
                        -> {"results": [{"rank", "key", "score", "caption", ...}, ...]} best first
    GET  /image/<key>   the gallery image (a JPEG thumbnail, at most 256 px a side)
    GET  /healthz       {"status": "ok", "images": n, "captions": n, "rerank": whether requests may ask for it}
    GET  /              the search page

Concurrent queries of one kind are gathered by `serve.batch` into one forward pass and one FAISS search.
Errors are JSON `{"error": "<what to change>"}` with a 4xx status; the replica goes on answering.

`pipeline serve` starts it (`serve_index`); `serve deploy serve.yaml` reaches it through `build_app`.
(No `from __future__ import annotations` here: FastAPI reads the routes' parameter types at run time.)
"""
import asyncio
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from pipeline.report_html import thumbnail_jpeg
from pipeline.serve.requests import MAX_BODY_BYTES, ApiError, SearchQuery, parse_search

PAGE = Path(__file__).with_name("page.html")
THUMBNAIL_PX = 256
BATCH, BATCH_WAIT_S = 32, 0.0  # no window: a batch is what queued while the last one ran

api = FastAPI(title="pipeline search", docs_url=None, redoc_url=None)


@dataclass(frozen=True)
class ServeArgs:
    """What a replica is built from (also `args:` of an application in serve.yaml)."""
    index: str
    checkpoint: str | None = None
    rerank: str | None = None
    rerank_k: int = 20
    endpoint_url: str = ""

    @classmethod
    def of(cls, args: dict) -> "ServeArgs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"unknown serve argument {unknown[0]!r}: the search application takes "
                             f"{', '.join(sorted(known))}")
        if not args.get("index"):
            raise ValueError("the search application needs `index`: a folder `pipeline index` wrote")
        return cls(**args)


def open_searcher(a: ServeArgs):
    """The Searcher a replica holds: the index (an s3:// one copied here first), its model or `a.checkpoint`,
    and the re-ranker given, else the one its run trained with the towers; both sides loaded now, so the first
    query is as fast as the next."""
    from pipeline import storage
    from pipeline.index.searcher import Searcher, read_meta
    from pipeline.index.sharded import index_checkpoint
    from pipeline.rerank.job import load, run_head

    storage.configure(a.endpoint_url)
    index_dir = a.index
    if a.index.startswith("s3://"):
        copy = storage.local_copy(a.index)
        index_dir = str(copy.__enter__())  # held for the replica's lifetime
    ckpt = a.checkpoint or index_checkpoint(index_dir, read_meta(index_dir))
    rerank = a.rerank or run_head(ckpt)
    reranker = load(rerank, ckpt) if rerank else None
    searcher = Searcher.open(index_dir, checkpoint=a.checkpoint, reranker=reranker, rerank_k=a.rerank_k)
    searcher.side("images"), searcher.side("captions"), searcher.gallery_images()
    return searcher


async def _bounded_body(request: Request):
    """The body, or None when it is over MAX_BODY_BYTES: read to its end (a client cut off mid-upload sees a
    reset, not the 413) but not kept past the limit. -> (body or None, its size)"""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= MAX_BODY_BYTES:
            chunks.append(chunk)
    return (b"".join(chunks) if size <= MAX_BODY_BYTES else None), size


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment(name="SearchService", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64,
                  health_check_period_s=2, health_check_timeout_s=10)
@serve.ingress(api)
class SearchService:
    def __init__(self, args: dict):
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.args = ServeArgs.of(args)
        self.searcher = open_searcher(self.args)
        self.images = self.searcher.gallery_images()

    @api.get("/healthz")
    def healthz(self):
        return {"status": "ok", **self.searcher.sizes, "rerank": self.searcher.reranker is not None}

    @api.get("/", response_class=HTMLResponse)
    def page(self):
        return HTMLResponse(PAGE.read_text())

    @api.get("/image/{key:path}")
    def image(self, key: str):
        if key not in self.images:
            return _error(404, f"no gallery image has the key {key!r}: use a key a search returned")
        try:
            data = thumbnail_jpeg(self.images.image_bytes(key), THUMBNAIL_PX)
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})
        except (OSError, ValueError, OverflowError) as e:
            return _error(502, f"the image of {key} could not be read from the gallery: {e}")

    @api.post("/search")
    async def search(self, request: Request):
        body, size = await _bounded_body(request)
        if body is None:
            return _error(413, f"the request is {size} bytes; send at most {MAX_BODY_BYTES} (resize the image)")
        try:
            query = parse_search(body, request.headers.get("content-type", ""), self.searcher.reranker is not None)
        except ApiError as e:
            return _error(e.status, e.message)
        hits = await (self.text_batch(query) if query.kind == "text" else self.image_batch(query))
        return {"results": hits}

    @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def text_batch(self, queries: list[SearchQuery]) -> list[list[dict]]:
        return await asyncio.to_thread(self.searcher.text, [q.text for q in queries], [q.k for q in queries],
                                       [q.rerank for q in queries])

    @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def image_batch(self, queries: list[SearchQuery]) -> list[list[dict]]:
        return await asyncio.to_thread(self.searcher.images, [q.image for q in queries], [q.k for q in queries],
                                       [q.rerank for q in queries])


def build_app(args: dict):
    """The application builder `serve deploy` calls with serve.yaml's `args:`."""
    return SearchService.bind(dataclasses.asdict(ServeArgs.of(dict(args))))


def serve_index(a: ServeArgs, host: str, port: int, replicas: int):
    """Start Serve's HTTP proxy on host:port and the search application with `replicas` replicas (on the Ray
    this process is connected to). -> the application's handle."""
    # Serve's per-request access log lines (to its log files): off, 8.7 -> 7.9 ms a request at concurrency 1 on
    # 2 cores (one try each, docs/benchmarks.md "Serving").
    quiet = {"enable_access_log": False, "log_level": "WARNING"}
    serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
    app = SearchService.options(num_replicas=replicas).bind(dataclasses.asdict(a))
    return serve.run(app, name="search", route_prefix="/", logging_config=quiet)
