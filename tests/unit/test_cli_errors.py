"""Mistakes a person makes at the command line: one line that says what to change, fast, before any Ray work
(and before torch or FAISS are even imported), never a traceback."""
import io
import subprocess
import sys
import tarfile

import pytest
from PIL import Image

from tests import faults

PROBE = ("import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
         "print(','.join(m for m in ('ray', 'torch', 'faiss') if m in sys.modules) or 'NONE'); sys.exit(rc)")


def _cli(args, cwd, env=None):
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def _one_line(out, needle, rc=2):
    assert out.returncode == rc, (out.stdout, out.stderr)
    assert needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def _shards(tmp_path):
    (tmp_path / "t").mkdir(exist_ok=True)
    with tarfile.open(tmp_path / "t" / "0.tar", "w") as tar:
        for name, data in (("k.jpg", faults.encode(faults.good_image())), ("k.txt", b"a red square")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tmp_path / "t"


def _recipe(tmp_path) -> list[str]:
    data = _shards(tmp_path)
    (tmp_path / "r.yaml").write_text(f"data: {{train: {data}, val: {data}}}\n")
    return ["--config", str(tmp_path / "r.yaml")]


def test_help_and_keys_import_neither_torch_nor_faiss(tmp_path):
    for argv in (["--help"], ["train", "--help"], ["keys"]):
        code = ("import sys; from pipeline.cli import main\ntry: main(sys.argv[1:])\nexcept SystemExit: pass\n"
                "print([m for m in ('ray', 'torch', 'faiss') if m in sys.modules])")
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path)
        assert out.stdout.strip().splitlines()[-1] == "[]", (argv, out.stdout[-300:])


@pytest.mark.parametrize("override, needle", [
    ("train.epoch=2", "unknown key 'train.epoch' (did you mean train.epochs?); train has batch_size, "),
    ("trian.epochs=2", "(did you mean train.epochs?); the sections are cca, data, "),
    ("eval.chunk_size=0", "eval.chunk_size=0 must be at least 1"),
    ("eval.batch_size=0", "eval.batch_size=0 must be at least 1"),
    ("train.log_every=0", "train.log_every=0 must be at least 1"),
    ("eval.ks=[]", "eval.ks=[] must be a non-empty list of positive integers"),
    ("run.name=..", "run.name='..' must be a folder name"),
    ("run.name=.", "run.name='.' must be a folder name"),
    ("loss.margin=9", "loss.margin is set but loss 'infonce' takes no margin"),
    ("loss.temperature=50", "temperature=50.0 must lie in [0.001, 10]"),
])
def test_config_errors_are_short_lines_without_torch(tmp_path, override, needle):
    out = _cli(["train", *_recipe(tmp_path), "--set", override], tmp_path)
    _one_line(out, needle)
    assert len(out.stderr) < 400  # the suggestion and one section's keys, not all ~110 keys
    assert out.stdout.strip() == "NONE"


@pytest.mark.parametrize("text, needle", [
    ("train:\n  epochs: 3\n  lr: [1, 2\nrun: {name: x}\n", "c.yaml: YAML syntax error at line 4, column 4"),
    ("train:\n\tepochs: 3\n", "c.yaml: YAML syntax error at line 2, column 1"),
    ("train:\n  epochs: 3\ntrain:\n  lr: 1\n", "c.yaml: line 3: 'train' is given twice in one section (first at "
                                               "line 1)"),
    ("train:\n  epochs: 3\n  epochs: 4\n", "c.yaml: line 3: 'epochs' is given twice"),
])
def test_yaml_mistakes_name_the_file_and_line(tmp_path, text, needle):
    (tmp_path / "c.yaml").write_text(text)
    _one_line(_cli(["train", "--config", str(tmp_path / "c.yaml")], tmp_path), needle)


def test_a_wrong_data_path_writes_no_synthetic_data(tmp_path):
    """data.synth.enabled generates only the synthetic default; a typo in the user's own path is an error."""
    (tmp_path / "c.yaml").write_text(f"data: {{train: {tmp_path}/mine/trian, val: {tmp_path}/mine/val, "
                                     f"synth: {{enabled: true, out: {tmp_path}/synth, train: 8, val: 4}}}}\n")
    out = _cli(["train", "--config", str(tmp_path / "c.yaml")], tmp_path)
    _one_line(out, f"data.train: {tmp_path}/mine/trian does not exist")
    assert not (tmp_path / "synth").exists() and out.stdout.strip() == "NONE"


def test_an_unwritable_storage_path_is_one_line(tmp_path):
    out = _cli(["train", *_recipe(tmp_path), "--set", "run.storage_path=/sys/runs"], tmp_path)
    _one_line(out, "run.storage_path=/sys/runs: cannot write there")
    assert "ray" not in out.stdout


@pytest.mark.parametrize("k", ["0", "-1"])
def test_search_k_must_be_positive(tmp_path, k):
    _one_line(_cli(["search", "--index", str(tmp_path), "--text", "a cat", "--k", k], tmp_path),
              f"--k {k}: ask for at least 1 result")


def _png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize("kind, needle", [
    ("corrupt", "cannot be read as an image"), ("truncated", "cannot be read as an image"),
    ("bomb", "the image claims more than"), ("just_over_limit", "the image claims more than"),
])
def test_search_bad_query_images_are_one_line(tmp_path, kind, needle):
    jpeg = faults.encode(faults.good_image(size=64))
    data = {"corrupt": b"not an image at all", "truncated": jpeg[: len(jpeg) // 2], "bomb": faults.bomb_png(),
            "just_over_limit": _png(12000, 12000)}[kind]  # between PIL's limit and twice it: only a warning
    (tmp_path / "q.png").write_bytes(data)
    _one_line(_cli(["search", "--index", str(tmp_path), "--image", str(tmp_path / "q.png")], tmp_path), needle)


def test_a_parquet_caption_column_of_the_wrong_type_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p").mkdir()
    jpg = faults.encode(faults.good_image())
    pq.write_table(pa.table({"jpg": [jpg, jpg], "caption": [1, 2]}), tmp_path / "p" / "0.parquet")
    (tmp_path / "c.yaml").write_text(f"data: {{train: {tmp_path}/p, val: {tmp_path}/p}}\n")
    out = _cli(["train", "--config", str(tmp_path / "c.yaml")], tmp_path)
    _one_line(out, "0.parquet: column caption (int64) has the wrong type; captions must be strings")
    assert out.stdout.strip() == "NONE"
