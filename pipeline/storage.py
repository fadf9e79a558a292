"""Where bytes live: local paths and s3:// URIs behind one fsspec interface (s3fs for S3).

Credentials come only from the standard AWS chain (environment, ~/.aws, instance roles); this module never
reads, stores or prints them. `storage.endpoint_url` (or AWS_ENDPOINT_URL) points s3fs at an S3-compatible
store. `configure` is called once per process (driver and each Ray worker) from the job config.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

_OPTIONS: dict = {"endpoint_url": "", "region": ""}


def configure(endpoint_url: str = "", region: str = "") -> None:
    """Set the S3 endpoint/region for every filesystem this process builds afterwards."""
    _OPTIONS.update(endpoint_url=endpoint_url or "", region=region or "")


def options() -> dict:
    """The settings to hand to another process (no credentials: those come from its own AWS chain)."""
    return dict(_OPTIONS)


def is_remote(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem():
    """An s3fs filesystem honouring the configured endpoint; credentials from the AWS chain."""
    import s3fs

    client_kwargs = {}
    if _OPTIONS["endpoint_url"]:
        client_kwargs["endpoint_url"] = _OPTIONS["endpoint_url"]
    if _OPTIONS["region"]:
        client_kwargs["region_name"] = _OPTIONS["region"]
    # A fresh instance each call: fsspec's instance cache would otherwise keep an endpoint across configure().
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, skip_instance_cache=True)


def filesystem(uri: str):
    """(fsspec filesystem, path inside it) for a local path or an s3:// URI."""
    if is_remote(uri):
        return s3_filesystem(), str(uri)[len("s3://"):]
    import fsspec

    return fsspec.filesystem("file"), str(Path(uri).absolute())


def arrow_filesystem(uri: str):
    """(pyarrow filesystem, path) for Ray Data and Ray Train; S3 goes through s3fs, local stays native."""
    import pyarrow.fs as pafs

    if is_remote(uri):
        return pafs.PyFileSystem(pafs.FSSpecHandler(s3_filesystem())), str(uri)[len("s3://"):]
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return "/".join([str(uri).rstrip("/"), *parts])
    return str(Path(uri).joinpath(*parts))


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object; on local disk through a temporary name so a reader never sees half a file."""
    if is_remote(uri):
        fs, path = filesystem(uri)
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    p = Path(uri)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(p)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def list_dirs(uri: str) -> list[str]:
    """Names of the sub-directories of `uri` (empty when it does not exist)."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    return sorted(Path(e["name"]).name for e in fs.ls(path, detail=True) if e["type"] == "directory")


def remove_tree(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def upload_tree(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory to `uri` (a no-op when it already is that directory)."""
    if not is_remote(uri):
        if Path(local_dir).resolve() != Path(uri).resolve():
            shutil.copytree(local_dir, uri, dirs_exist_ok=True)
        return
    fs, path = filesystem(uri)
    for f in sorted(Path(local_dir).rglob("*")):
        if f.is_file():
            fs.put_file(str(f), f"{path}/{f.relative_to(local_dir).as_posix()}")


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local directory holding the contents of `uri`: the directory itself, or a temporary download."""
    if not is_remote(uri):
        yield Path(uri)
        return
    fs, path = filesystem(uri)
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-"))
    try:
        for entry in fs.find(path):
            rel = entry[len(path.rstrip("/")) + 1:]
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(entry, str(dest))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(uri: str) -> Iterator[Path]:
    """A local directory to write into; uploaded to `uri` on success when `uri` is remote."""
    if not is_remote(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
        yield Path(uri)
        return
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-"))
    try:
        yield tmp
        upload_tree(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

