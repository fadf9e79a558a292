"""One launch owns a run directory: a second one refuses in one line naming the first, locally (a flock the
kernel lets go of when the owner dies, SIGKILL included) and on S3 (a leased lock object with conditional
writes, against moto's server); a lapsed lease, or a dead owner on this host, is taken over."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline import storage
from pipeline.training.run_lock import RunDirBusy, RunLock

HOLD = """
import sys, time
from pipeline.training.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_launch_refuses_naming_the_first_and_a_killed_ones_lock_is_free(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    proc = _holder(run_dir)
    try:
        with pytest.raises(RunDirBusy) as e:
            with RunLock(str(run_dir)):
                pass
        msg = str(e.value)
        assert f"{run_dir} is in use by another launch (pid {proc.pid} on {socket.gethostname()}, started " in msg
        assert "choose another run.name" in msg and "\n" not in msg
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLock(str(run_dir)):  # the kernel let go with the process
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
    with RunLock(str(run_dir)):  # and a lock let go of by its owner is free again
        pass


@pytest.fixture(scope="module")
def s3():
    from tests.unit.test_s3_errors import _moto

    import boto3

    proc, url = _moto({})
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="runs")
    storage.configure(url)
    yield url
    storage.configure("")
    proc.terminate()
    proc.wait(10)


def _lock_body(**fields):
    return json.dumps({"host": "elsewhere", "pid": 4242, "started": "2026-12-07T00:00:00+00:00", **fields}).encode()


def test_on_s3_a_live_lease_refuses_and_a_lapsed_one_is_taken_over(s3):
    import boto3

    client = boto3.client("s3", endpoint_url=s3)
    run_dir = "s3://runs/sweeps/a"
    client.put_object(Bucket="runs", Key="sweeps/a/.lock", Body=_lock_body(expires=time.time() + 60))
    with pytest.raises(RunDirBusy, match=r"in use by another launch \(pid 4242 on elsewhere, .*its lease on "
                                         r"s3://runs/sweeps/a/.lock runs until"):
        with RunLock(run_dir):
            pass
    client.put_object(Bucket="runs", Key="sweeps/a/.lock", Body=_lock_body(expires=time.time() - 1))
    # a lease of 6 s renewed every 2: short enough to watch a renewal, long enough for a loaded machine
    with RunLock(run_dir, lease_s=6.0):
        first = json.loads(client.get_object(Bucket="runs", Key="sweeps/a/.lock")["Body"].read())
        assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
        with pytest.raises(RunDirBusy):  # ours now, renewed while we hold it
            with RunLock(run_dir):
                pass
        time.sleep(2.5)
        renewed = json.loads(client.get_object(Bucket="runs", Key="sweeps/a/.lock")["Body"].read())
        assert renewed["expires"] > first["expires"]
    assert "Contents" not in client.list_objects_v2(Bucket="runs", Prefix="sweeps/a/.lock")  # let go: removed


def test_on_s3_a_dead_owner_on_this_host_is_not_waited_for(s3):
    import boto3

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    body = json.dumps({"host": socket.gethostname(), "pid": dead.pid, "expires": time.time() + 60}).encode()
    boto3.client("s3", endpoint_url=s3).put_object(Bucket="runs", Key="b/.lock", Body=body)
    with RunLock("s3://runs/b"):
        pass
