"""S3 misconfiguration is one line naming the key, the URI and what to set, before any Ray work and within
seconds: against a real S3 endpoint (moto's server on 127.0.0.1, in its own process) and with no credentials."""
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.unit.test_cli_errors import _cli, _one_line, _recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto(extra_env: dict) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **extra_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("moto's server did not start")


@pytest.fixture(scope="module")
def endpoints():
    """An open endpoint with bucket 'runs', and one that denies every request (moto enforcing IAM: the test
    credentials are unknown to it)."""
    import boto3

    open_proc, open_url = _moto({})
    boto3.client("s3", endpoint_url=open_url).create_bucket(Bucket="runs")
    denied_proc, denied_url = _moto({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    yield {"open": open_url, "denied": denied_url}
    for p in (open_proc, denied_proc):
        p.terminate()
        p.wait(10)


@pytest.mark.parametrize("case, needle", [
    ("missing_bucket", "run.storage_path=s3://nosuch/runs: bucket 'nosuch' does not exist at http://127.0.0.1:"),
    ("closed_endpoint", "run.storage_path=s3://runs/x: cannot reach the S3 endpoint http://127.0.0.1:"),
    ("denied", "run.storage_path=s3://runs/x: access denied"),
    ("no_credentials", "run.storage_path=s3://runs/x: no AWS credentials found: set AWS_ACCESS_KEY_ID"),
    ("data_missing_bucket", "data.train=s3://nosuch/train/{00000..00003}.tar: bucket 'nosuch' does not exist"),
])
def test_s3_mistakes_are_one_line_before_ray(tmp_path, endpoints, case, needle):
    env = dict(os.environ)
    endpoint, storage_path, extra = endpoints["open"], "s3://runs/x", []
    if case == "missing_bucket":
        storage_path = "s3://nosuch/runs"
    elif case == "closed_endpoint":
        endpoint = f"http://127.0.0.1:{_free_port()}"
    elif case == "denied":
        endpoint = endpoints["denied"]
    elif case == "no_credentials":
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            env.pop(k, None)
        env |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                "AWS_EC2_METADATA_DISABLED": "true"}
    else:
        extra = ["--set", "data.train=s3://nosuch/train/{00000..00003}.tar"]
    t0 = time.time()
    out = _cli(["train", *_recipe(tmp_path), "--set", f"storage.endpoint_url={endpoint}",
                "--set", f"run.storage_path={storage_path}", *extra], tmp_path, env=env)
    _one_line(out, needle)
    assert out.stdout.strip() == "NONE"  # neither Ray nor torch was started
    assert time.time() - t0 < 60  # bounded retries and connect timeouts: an answer, never a hang


@pytest.mark.parametrize("case, needle", [
    ("no_credentials", "PATH=s3://runs/train: no AWS credentials found: set AWS_ACCESS_KEY_ID"),
    ("missing_bucket", "PATH=s3://nosuch/train: bucket 'nosuch' does not exist at http://127.0.0.1:"),
])
def test_data_inspect_on_s3_is_one_line_too(tmp_path, endpoints, case, needle):
    env = dict(os.environ)
    path = "s3://runs/train" if case == "no_credentials" else "s3://nosuch/train"
    if case == "no_credentials":
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            env.pop(k, None)
        env |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                "AWS_EC2_METADATA_DISABLED": "true"}
    out = _cli(["data", "inspect", path, "--endpoint-url", endpoints["open"]], tmp_path, env=env)
    _one_line(out, needle)
    assert out.stdout.strip() == "NONE"


def test_shard_fingerprints_on_s3_come_from_one_listing_and_see_a_rewrite(endpoints):
    import boto3

    from pipeline import storage

    s3 = boto3.client("s3", endpoint_url=endpoints["open"])
    for name, body in (("00000.tar", b"a" * 10), ("00001.tar", b"b" * 20)):
        s3.put_object(Bucket="runs", Key=f"fp/{name}", Body=body)
    storage.configure(endpoints["open"])
    try:
        paths = ["s3://runs/fp/00000.tar", "s3://runs/fp/00001.tar", "s3://runs/fp/gone.tar"]
        first = storage.fingerprints(paths)
        assert first[paths[0]].startswith("10:") and first[paths[1]].startswith("20:") and first[paths[2]] == ""
        s3.put_object(Bucket="runs", Key="fp/00000.tar", Body=b"c" * 10)  # same size, other bytes: other ETag
        again = storage.fingerprints(paths)
        assert again[paths[0]] != first[paths[0]] and again[paths[1]] == first[paths[1]]
    finally:
        storage.configure("")
