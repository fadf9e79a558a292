"""The wheels stage 2 of the GPU check needs on a GPU machine that has no Ray and can download nothing: Ray itself,
without its Java jar (32 MiB of its 75.6; only Java workers load it) and the dashboard's source maps, and the
one family of Ray's requirements that machine's image lacks (jsonschema, with referencing, rpds-py and
jsonschema-specifications; /work/.library/device/KINDS.md lists what it has). Ray's version is this checkout's.

    .venv/bin/python bench/gpu_bundle.py              # -> .whl/ for Python 3.12 (the GPU machine's), 44 MiB
    .venv/bin/python bench/gpu_bundle.py --python 3.11 --out /tmp/whl   # for a check on this machine

On the machine, as the device notes say (the folder travels with `carry: [".whl"]`):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site bench/gpu.sh
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

EXTRA = ("jsonschema", "jsonschema-specifications", "referencing", "rpds-py")
DROP = ("ray/jars/", ".js.map")  # a wheel member is left out when its name starts with or ends with one of these
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
LIMIT = 64 << 20  # what a device call carries at most, the working tree included


def download(names: list[str], python: str, into: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "-d", str(into)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + names, check=True)


def slim(wheel: Path, out: Path) -> tuple[int, int]:
    """A copy of `wheel` without the DROP members (and their RECORD lines) -> (bytes before, after)."""
    keep = lambda name: not any(name.startswith(d) or name.endswith(d) for d in DROP)  # noqa: E731
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if not keep(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line for line in data.decode().splitlines(True) if keep(line.split(",")[0])).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return wheel.stat().st_size, out.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default="3.12", help="the target's Python version (default 3.12)")
    ap.add_argument("--out", default=".whl", help="folder written (emptied first; default .whl)")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pins = [f"ray=={metadata.version('ray')}"] + [f"{n}=={metadata.version(n)}" for n in EXTRA]
    with tempfile.TemporaryDirectory() as tmp:
        download(pins, args.python, Path(tmp))
        for wheel in sorted(Path(tmp).glob("*.whl")):
            if wheel.name.startswith("ray-"):
                before, after = slim(wheel, out / wheel.name)
                print(f"{wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB without {', '.join(DROP)}")
            else:
                shutil.copy(wheel, out / wheel.name)
    total = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}/: {len(list(out.iterdir()))} wheels, {total / 2**20:.1f} MiB"
          + ("" if total < LIMIT - (4 << 20) else f"; over what a device call carries with the tree ({LIMIT >> 20} MiB)"))


if __name__ == "__main__":
    main()
