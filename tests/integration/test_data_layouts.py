"""Shard layouts on the shared local Ray: folders written by the real img2dataset (WebDataset and Parquet)
from a local HTTP server with some 404s, same-named shards in two folders, unreadable Parquet shards."""
import csv
import functools
import http.server
import os
import subprocess
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data import ingest, transforms
from pipeline.data.formats.inspect import inspect_shards
from pipeline.data.skips import SkipLog
from tests import faults

from .conftest import ROOT

# img2dataset pins pandas<3 (and brings opencv, albumentations, wandb): it lives in a venv of its own that
# `make` creates, and is run by path.
IMG2DATASET = ROOT / ".venv-img2dataset" / "bin" / "img2dataset"
MISSING = ("lost.jpg", "gone.jpg")  # the server answers 404 for these


@pytest.fixture(scope="module")
def img2dataset_folders(tmp_path_factory):
    """{output_format: folder} written by img2dataset from 6 URLs on 127.0.0.1, 2 of which are 404s."""
    if not IMG2DATASET.exists():
        pytest.fail(f"{IMG2DATASET} is missing: `make img2dataset` installs it")
    root = tmp_path_factory.mktemp("img2dataset")
    www = root / "www"
    www.mkdir()
    for i in range(4):
        (www / f"{i}.jpg").write_bytes(faults.encode(faults.good_image(i, 32)))
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    names = ["0.jpg", MISSING[0], "1.jpg", "2.jpg", MISSING[1], "3.jpg"]  # a failure in each 4-URL shard
    with open(root / "urls.csv", "w", newline="") as f:
        csv.writer(f).writerows([("url", "caption")] + [(f"{base}/{n}", f"picture {n}") for n in names])
    # no proxy for the local server; no update checks (albumentations) or telemetry (wandb): no other network
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled"}
    procs = {fmt: subprocess.Popen(
        [str(IMG2DATASET), "--url_list", str(root / "urls.csv"), "--input_format", "csv", "--url_col", "url",
         "--caption_col", "caption", "--output_format", fmt, "--output_folder", str(root / fmt),
         "--processes_count", "1", "--thread_count", "4", "--number_sample_per_shard", "4",
         "--resize_mode", "no", "--distributor", "multiprocessing", "--retries", "0", "--timeout", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for fmt in ("webdataset", "parquet")}
    try:
        for fmt, p in procs.items():  # both at once: each spends most of its ~4 s importing
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, f"img2dataset --output_format {fmt} failed:\n{out[-3000:]}"
    finally:
        server.shutdown()
    return {fmt: root / fmt for fmt in procs}, {f"{base}/{n}" for n in MISSING}


def _counted(skip_log, split: str, want: dict, wait_s: float = 10.0) -> dict:
    """The log's keys for `split`, once they equal `want` or after `wait_s` (a guard: each map task waits for
    the log to take its batch's keys, so they should be there when the dataset's last block is)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        got = skip_log.read().get(split, {})
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _failed_in_metadata(folder, fmt):
    """key (as the pipeline names it) -> url of every failed download, from img2dataset's own Parquet."""
    out = {}
    for meta in sorted(folder.glob("*.parquet")):
        shard = meta.stem + (".tar" if fmt == "webdataset" else ".parquet")
        for r in pq.read_table(meta, columns=["key", "url", "status"]).to_pylist():
            if r["status"] != "success":
                out[f"{shard}/{r['key']}"] = r["url"]
    return out


@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_img2dataset_output_folder_reads_with_its_failed_downloads(ray_cluster, img2dataset_folders, fmt):
    folders, missing_urls = img2dataset_folders
    folder = folders[fmt]
    failed = _failed_in_metadata(folder, fmt)
    assert set(failed.values()) == missing_urls  # img2dataset saw the 404s

    shards = ingest.resolve_shards(str(folder), "PATH")  # the folder as img2dataset left it
    ext = "tar" if fmt == "webdataset" else "parquet"
    assert [os.path.basename(p) for p in shards.paths] == [f"00000.{ext}", f"00001.{ext}"]
    ingest.check_shards(shards.paths, "PATH")
    text = inspect_shards(shards)
    assert "samples: 6" in text and "usable: 4" in text, text
    assert "nan" not in text, text  # a failed download has no members, and is no row of that line
    assert "unreadable: not_downloaded x2 (2 rows are not samples)" in text, text
    assert "img2dataset stats: " in text and "failed_to_download 2" in text
    for key, url in failed.items():  # each failure shown with its key, error and URL
        assert f"  not_downloaded:{key} (HTTP Error 404: File not found, {url})" in text, text

    # What the run report's skip counts are made of: the same keys reach the skip log.
    skip_log = SkipLog.start()
    rows = ingest.eval_dataset(shards.paths, 16, skip_log, split="gallery").take_all()
    assert len(rows) == 4
    want = {"not_downloaded": sorted(failed)}
    assert _counted(skip_log, "gallery", want) == want


def test_same_named_shards_in_two_folders_keep_their_own_keys(ray_cluster, tmp_path):
    """a/00000.tar and b/00000.tar with the same member names: keys stay apart, captions join their image."""
    colours = {"a": (230, 20, 20), "b": (20, 20, 230)}
    for folder, rgb in colours.items():
        members = []
        for i in range(3):
            members += [(f"{i:04d}.jpg", faults.encode(faults.Image.new("RGB", (16, 16), rgb))),
                        (f"{i:04d}.txt", f"colour {folder}".encode())]
        faults.write_tar(tmp_path / folder / "00000.tar", members)
    paths = ingest.expand_paths(str(tmp_path))
    images = ingest.eval_dataset(paths, 16).take_all()
    keys = [r["key"] for r in images]
    assert sorted(keys) == sorted(f"{f}/00000.tar/{i:04d}" for f in colours for i in range(3))
    # Evaluation's join: captions come from a second, image-less pass and find their image by key.
    captions = ingest.read_shards(paths, with_images=False).map_batches(transforms.caption_rows).take_all()
    owner = {r["key"]: "a" if r["image"][0].mean() > r["image"][2].mean() else "b" for r in images}
    assert len(captions) == 6 and all(c["caption"] == f"colour {owner[c['key']]}" for c in captions)


def test_unreadable_parquet_is_skipped_and_counted_wherever_it_comes(ray_cluster, tmp_path):
    jpg = faults.encode(faults.good_image())
    (tmp_path / "00000.parquet").write_bytes(b"")  # first: the pre-flight check used to read only this one
    pq.write_table(pa.table({"jpg": [jpg, jpg], "caption": ["a", "b"]}), tmp_path / "00001.parquet")
    (tmp_path / "00002.parquet").write_bytes(b"PAR1 no footer")
    paths = ingest.expand_paths(str(tmp_path))
    ingest.check_shards(paths, "data.val")
    skip_log = SkipLog.start()
    assert len(ingest.eval_dataset(paths, 16, skip_log).take_all()) == 2
    want = {"unreadable_shard": ["00000.parquet/", "00002.parquet/"]}
    assert _counted(skip_log, "val", want) == want
