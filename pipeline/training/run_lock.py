"""One launch owns a run directory at a time: `pipeline train` (and `run`) takes `<run_dir>/.lock` before it writes
anything there, and a second launch on the same run.name refuses in one line naming the first (host, pid, start).

- Local (or any POSIX file system): an exclusive `flock` on the file, held while the driver lives. The kernel
  lets go of it when the process ends however it ends (a SIGKILL too), so a dead run's lock is never in the
  way and there is nothing to take over.
- S3 (and S3-like stores with conditional writes): a lock object written with `If-None-Match: *`, holding a
  lease that a thread renews (`If-Match` on its own ETag) every third of `LEASE_S`. A lock whose lease has run
  out belongs to a run that stopped renewing it (killed, or its node lost) and is taken over, again by a
  conditional write, so two launches cannot both take it; so is one whose owner ran on this host and is gone.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime, timezone

from pipeline import storage

LEASE_S = 90.0
NAME = ".lock"


class RunDirBusy(RuntimeError):
    """Another launch owns the run directory."""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _busy(run_dir: str, owner: dict, how: str) -> RunDirBusy:
    who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"
    return RunDirBusy(f"{run_dir} is in use by another launch ({who}; {how}); wait for it to finish, or choose "
                      "another run.name")


class RunLock:
    """`with RunLock(run_dir):` around everything a launch writes into it; raises RunDirBusy on entry."""

    def __init__(self, run_dir: str, lease_s: float = LEASE_S, wait_s: float = 0.0):
        """`wait_s`: how long an S3 lock held by another launch may be waited for (a Tune trial restarted after
        its node was lost waits out the dead one's lease); 0: refuse at once."""
        self.run_dir, self.lease_s, self.wait_s = str(run_dir), lease_s, wait_s
        self.path = storage.join(self.run_dir, NAME)
        self._fd: int | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        (self._take_s3 if storage.is_remote(self.run_dir) else self._take_local)()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------------------------------ local

    def _take_local(self) -> None:
        import fcntl

        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_json(os.pread(fd, 4096, 0))
            os.close(fd)
            raise _busy(self.run_dir, owner, f"it holds {self.path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        self._fd = fd

    # ------------------------------------------------------------------------------------------ S3

    def _take_s3(self) -> None:
        fs = storage.s3_filesystem()
        bucket, key = self.path[len("s3://"):].split("/", 1)
        try:
            self._etag = _put(fs, bucket, key, self._lease(), IfNoneMatch="*")
        except OSError as e:
            if not _lost_race(e):
                raise
            body, etag = _get(fs, self.path)
            owner = _read_json(body)
            deadline = time.time() + self.wait_s
            while float(owner.get("expires", 0)) > time.time() and not _dead_here(owner):
                if time.time() >= deadline:
                    raise _busy(self.run_dir, owner, f"its lease on {self.path} runs until "
                                                     f"{_when(owner['expires'])}") from None
                time.sleep(min(5.0, max(0.1, deadline - time.time())))
                body, etag = _get(fs, self.path)
                owner = _read_json(body)
            try:  # a lease that ran out: the run stopped renewing it; take it over, once
                self._etag = _put(fs, bucket, key, self._lease(), IfMatch=etag)
            except OSError as e2:
                if not _lost_race(e2):
                    raise
                raise _busy(self.run_dir, _read_json(_get(fs, self.path)[0]), "it took the lapsed lock just "
                                                                               "now") from None
        self._thread = threading.Thread(target=self._renew, args=(fs, bucket, key), daemon=True, name="run-lock")
        self._thread.start()

    def _lease(self) -> bytes:
        return json.dumps({**_me(), "expires": time.time() + self.lease_s}).encode()

    def _renew(self, fs, bucket: str, key: str) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self._etag = _put(fs, bucket, key, self._lease(), IfMatch=self._etag)
            except Exception as e:  # noqa: BLE001 - taken over (we were presumed dead) or S3 unreachable
                print(f"[train] could not renew the run directory's lock {self.path}: {type(e).__name__}")
                return

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing lets go of the flock; the file stays, naming its last owner
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            self._thread = None
            try:
                storage.s3_filesystem().rm(self.path[len("s3://"):])
            except OSError:
                pass


def _put(fs, bucket: str, key: str, body: bytes, **condition) -> str:
    return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)["ETag"]


def _get(fs, uri: str) -> tuple[bytes, str]:
    path = uri[len("s3://"):]
    return fs.cat_file(path), fs.info(path)["ETag"]


def _lost_race(e: OSError) -> bool:
    """A conditional write refused (412): s3fs raises FileExistsError for If-None-Match, OSError for If-Match."""
    return isinstance(e, FileExistsError) or "pre-condition" in str(e)


def _dead_here(owner: dict) -> bool:
    """The lock's owner ran on this host and its process is gone: no need to wait out its lease."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return False
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _read_json(data: bytes) -> dict:
    try:
        d = json.loads(data.decode() or "{}")
        return d if isinstance(d, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def _when(t: float) -> str:
    return datetime.fromtimestamp(float(t), timezone.utc).isoformat(timespec="seconds")
