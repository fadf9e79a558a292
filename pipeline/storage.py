"""Where bytes live: local paths and s3:// URIs behind one fsspec interface (s3fs for S3).

Credentials come only from the standard AWS chain (environment, ~/.aws, instance roles); this module never
reads, stores or prints them. `storage.endpoint_url` (or AWS_ENDPOINT_URL) points s3fs at an S3-compatible
store. `configure` is called once per process (driver and each Ray worker) from the job config.
"""
from __future__ import annotations

import contextlib
import os
import re
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


def s3_filesystem(fail_fast: bool = False):
    """An s3fs filesystem honouring the configured endpoint; credentials from the AWS chain. `fail_fast`: short
    connect timeouts and one retry, for the pre-flight checks that must answer within seconds."""
    import s3fs

    client_kwargs = {}
    if _OPTIONS["endpoint_url"]:
        client_kwargs["endpoint_url"] = _OPTIONS["endpoint_url"]
    if _OPTIONS["region"]:
        client_kwargs["region_name"] = _OPTIONS["region"]
    # Bounded everywhere: a closed endpoint must fail, never hang. Reads of large shards keep the long read
    # timeout; only the pre-flight shortens it.
    config = {"connect_timeout": 5 if fail_fast else 20, "read_timeout": 10 if fail_fast else 120,
              "retries": {"max_attempts": 2 if fail_fast else 5, "mode": "standard"}}
    # A fresh instance each call: fsspec's instance cache would otherwise keep an endpoint across configure().
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, config_kwargs=config, skip_instance_cache=True)


def check_access(uri: str, key: str, write: bool = False) -> None:
    """Before any Ray work: `uri` (the value of config key or flag `key`) can be listed, and with `write`
    written to. Any failure is one ConfigError line naming the key, the URI and what to set."""
    from pipeline.errors import ConfigError

    if not is_remote(uri):
        if write:
            _check_local_writable(Path(uri), key)
        return
    bucket, _, prefix = str(uri)[len("s3://"):].partition("/")
    prefix = re.split(r"[*?\[{]", prefix, maxsplit=1)[0]  # a glob or brace list: list what precedes it
    fs = s3_filesystem(fail_fast=True)
    try:
        fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        if write:
            probe = f"{bucket}/{prefix.rstrip('/') + '/' if prefix else ''}.pipeline-write-check"
            fs.pipe(probe, b"")
            fs.rm(probe)
    except Exception as e:  # botocore's and s3fs's errors are many classes; say which case this is
        raise ConfigError(f"{key}={uri}: {_explain_s3_error(e, bucket, write)}") from None


def _explain_s3_error(e: Exception, bucket: str, write: bool) -> str:
    endpoint = _OPTIONS["endpoint_url"] or "AWS S3 (set storage.endpoint_url for MinIO, Ceph, ...)"
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
                "~/.aws/credentials, an instance role)")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError") \
            or isinstance(e, (ConnectionError, TimeoutError)):
        return f"cannot reach the S3 endpoint {endpoint}; check storage.endpoint_url (and that the server is up)"
    if isinstance(e, FileNotFoundError):
        return f"bucket {bucket!r} does not exist at {endpoint}; create it or fix the bucket name"
    if isinstance(e, PermissionError):
        what = "list and write" if write else "list"
        return (f"access denied ({e}); the credentials in the AWS chain may not {what} bucket {bucket!r}: "
                "check AWS_ACCESS_KEY_ID / AWS_PROFILE and the bucket policy")
    first = (str(e).strip().splitlines() or [""])[0]
    return f"S3 request to {endpoint} failed: {name}: {first[:300]}"


def _check_local_writable(path: Path, key: str) -> None:
    """The folder (created when missing) takes a new file: a read-only disk or folder is one line now, not a
    bare OSError from inside a Ray worker later."""
    from pipeline.errors import ConfigError

    probe = path / ".pipeline-write-check"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot write there ({e.strerror or e}); choose a writable folder") from None


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


def relative_ref(target: str, base_dir: str) -> str:
    """How a file in `base_dir` (a run's index/, report/ or a sweep's results folder) names `target`: relative
    to `base_dir` when `target` lies inside base_dir's parent (the run or sweep directory), so a copied or
    moved run still finds its own checkpoints; absolute otherwise."""
    import posixpath

    remote = is_remote(base_dir)
    if remote != is_remote(target) or (not remote and not os.path.exists(target)):
        return str(target)  # another store, or no path at all (a baseline's label stands where a checkpoint would)
    strip = (lambda u: str(u)[len("s3://"):]) if remote else (lambda u: os.path.abspath(u))  # noqa: E731
    t, b = strip(target), strip(base_dir).rstrip("/")
    root = posixpath.dirname(b)
    if not (t + "/").startswith(root + "/"):
        return str(target) if remote else t
    return posixpath.relpath(t, b)


def resolve_ref(ref: str, base_dir: str) -> str:
    """A path `relative_ref` wrote in `base_dir` -> one to open (an absolute or s3:// one is kept)."""
    import posixpath

    if is_remote(ref) or os.path.isabs(ref):
        return ref
    if is_remote(base_dir):
        return "s3://" + posixpath.normpath(posixpath.join(str(base_dir)[len("s3://"):], ref))
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), ref))


def fingerprints(paths: list[str]) -> dict[str, str]:
    """path -> what tells a file's content apart cheaply: size and modification time locally, size and ETag on
    S3 (one listing a folder, not a request a file). A file that cannot be seen maps to ''."""
    from collections import defaultdict

    out: dict[str, str] = {}
    folders: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        if is_remote(p):
            folders[p.rsplit("/", 1)[0]].append(p)
            continue
        try:
            st = os.stat(p)
            out[p] = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            out[p] = ""
    fs = s3_filesystem() if folders else None
    for folder, members in folders.items():
        try:
            listed = {"s3://" + e["name"]: e for e in fs.ls(folder, detail=True)}
        except (OSError, ValueError):
            listed = {}
        for p in members:
            e = listed.get(p, {})
            out[p] = f"{e['size']}:{str(e.get('ETag', '')).strip(chr(34))}" if e else ""
    return out


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

