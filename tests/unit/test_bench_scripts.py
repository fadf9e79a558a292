"""The benchmarks' own parts that a figure depends on: the real-photo crop dataset (captions that say where a
crop is, the same bytes every time) and the GPU check's first stage, which must run where neither Ray nor
PyYAML is installed (the GPU machine) and build the demo recipe's towers, and the Ray wheel the second stage
carries there."""
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import gpu_noray, photo_crops  # noqa: E402

BLOCK = """
import sys, runpy
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'faiss', 'yaml'):
            raise ImportError('not installed here: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['bench/gpu_noray.py'] + sys.argv[1:]
runpy.run_path('bench/gpu_noray.py', run_name='__main__')
"""


def read(folder: Path) -> list[tuple[bytes, dict]]:
    out = []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        out += [(members[k], json.loads(members[k[:-4] + ".json"])) for k in sorted(members) if k.endswith(".jpg")]
    return out


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    out = tmp_path_factory.mktemp("crops")
    done = photo_crops.write_dataset(out, n_train=60, n_val=20, size=48)
    return out, done


def test_crops_are_real_photos_with_five_captions_that_say_where_they_are(crops):
    out, done = crops
    assert done["train"] == 60 and done["val"] == 20 and len(done["photos"]) >= 19
    rows = read(out / "train")
    zooms = set()
    for image, meta in rows:
        assert Image.open(io.BytesIO(image)).size == (48, 48)
        caps = meta["captions"]
        assert len(set(caps)) == 5
        photo = photo_crops.load_source(meta["source"])
        h, w = photo.shape[:2]
        x0, y0, side, _ = meta["box"]
        assert 0 <= x0 <= w - side and 0 <= y0 <= h - side
        zooms.add(meta["zoom"])
        if meta["zoom"] == "whole":
            assert side >= 0.85 * min(h, w) - 1 and all(" the " not in c.split(" of ")[0] for c in caps)
            continue
        # the caption's region agrees with where the box lies in the room it could move in
        fx, fy = (x0 / (w - side) if w > side else 0.5), (y0 / (h - side) if h > side else 0.5)
        region = meta["region"]
        assert all(any(r in c for r in (region, *_synonyms(meta["zoom"], region))) for c in caps)
        if "left" in region:
            assert fx < 0.2
        if "right" in region:
            assert fx > 0.8
        if region.startswith("top"):
            assert fy < 0.2
        if region.startswith("bottom"):
            assert fy > 0.8
        if region == "centre":
            assert 0.3 < fx < 0.7 and 0.3 < fy < 0.7
    assert zooms == {"whole", "half", "quarter"}


def _synonyms(zoom: str, region: str) -> tuple[str, ...]:
    return next(names for names in photo_crops.REGIONS[zoom] if names[0] == region)


def test_crops_are_the_same_bytes_every_time_and_val_differs_from_train(crops, tmp_path):
    out, _ = crops
    photo_crops.write_dataset(tmp_path, n_train=60, n_val=20, size=48)
    for split in ("train", "val"):
        assert (tmp_path / split / "00000.tar").read_bytes() == (out / split / "00000.tar").read_bytes()
    train = {(m["source"], tuple(m["box"])) for _, m in read(out / "train")}
    val = {(m["source"], tuple(m["box"])) for _, m in read(out / "val")}
    assert not train & val
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b, _ in read(out / "val")])
    assert pixels.std() > 20  # real pictures, not flat colour


def test_the_gpu_checks_demo_pair_is_the_demo_recipes_towers():
    recipe = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    flat = {f"model.{k}": v for k, v in recipe["model"].items() if not isinstance(v, dict)}
    flat |= {f"model.{t}.{k}": v for t in ("image", "text") for k, v in recipe["model"][t].items()}
    flat |= {f"data.{k}": recipe["data"][k] for k in ("image_size", "max_tokens")}
    pair = gpu_noray.PAIRS["demo"]
    assert {k: v for k, v in pair.items() if k != "batch"} == flat and pair["batch"] == recipe["train"]["batch_size"]


def test_the_gpu_check_runs_without_ray_or_yaml(tmp_path):
    out = tmp_path / "figures.json"
    run = subprocess.run([sys.executable, "-c", BLOCK, "--device", "cpu", "--smoke", "--pairs", "demo",
                          "--decode-images", "8", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(out.read_text())
    (step,) = figures["steps"]
    assert step["pair"] == "demo" and step["project_samples_per_s"] > 0 and step["plain_samples_per_s"] > 0
    assert step["step_gflops"] > 0 and step["mfu_project"] is None  # no MFU without a GPU's peak
    dec = figures["decode"]
    assert dec["images"] == 8 and dec["pil_per_s"] > 0 and dec["torchvision_cpu_per_s"] > 0
    assert dec["cuda_per_s"] is None and "real photographs" in dec["what"]


def test_the_ray_bundle_leaves_out_the_java_jar_and_its_record_lines(tmp_path):
    from bench import gpu_bundle

    members = {"ray/__init__.py": b"x = 1\n", "ray/jars/ray_dist.jar": b"\0" * 4096,
               "ray/dashboard/client/build/static/js/main.js": b"js", "ray/dashboard/client/build/main.js.map": b"m"}
    record = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in members.items()) + "ray-1.dist-info/RECORD,,\n"
    wheel = tmp_path / "ray-1-cp312-cp312-manylinux2014_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("ray-1.dist-info/RECORD", record)
    out = tmp_path / "slim" / wheel.name
    out.parent.mkdir()
    gpu_bundle.slim(wheel, out)
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        kept_record = z.read("ray-1.dist-info/RECORD").decode()
    assert names == {"ray/__init__.py", "ray/dashboard/client/build/static/js/main.js", "ray-1.dist-info/RECORD"}
    assert "jars" not in kept_record and ".js.map" not in kept_record and "ray/__init__.py" in kept_record
