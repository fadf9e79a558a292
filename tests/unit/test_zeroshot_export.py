"""`pipeline zeroshot` against clip_benchmark's own zero-shot code, and `pipeline export --format clip-retrieval`
read back with embedding-reader (what autofaiss and clip-retrieval read embeddings with) and searched with FAISS.

The model is a small OpenCLIP ViT initialised at random and saved here (nothing downloaded), imported as a
checkpoint; the reference runs the OpenCLIP model itself, over torchvision's ImageFolder with OpenCLIP's own
preprocessing, through clip_benchmark's `evaluate`. The images are crops of scikit-image's real photos, portrait
and landscape, one class folder per photo."""
import json

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")
skimage = pytest.importorskip("skimage.data")
zc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")

from pipeline.config import EvalJobConfig, load_config  # noqa: E402
from tests.models import CONFIG, NAME, tiny_open_clip  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_open_clip(tmp_path_factory.mktemp("zs-model"))


def _image_folder(root, photos, per_class: int = 3):
    from PIL import Image

    for name in photos:
        (root / name).mkdir(parents=True)
        img = getattr(skimage, name)()
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img
        h, w = img.shape[:2]
        for j in range(per_class):  # portrait and landscape crops from different corners
            top, left = (j * h) // 6, (j * w) // 5
            crop = img[top:top + h * 3 // 4, left:left + w // 2] if j % 2 else img[top:top + h // 2, left:]
            Image.fromarray(crop).save(root / name / f"{j}.jpg", quality=95)
    return root


def _accuracy(output, target, topk=(1,)):
    """clip_benchmark 1.6.2's `accuracy`, with `.sum()` for its `float(array of shape (1,))`, which NumPy 2.3 refuses."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum()) / len(target) for k in topk]


def _reference(ref, root, classnames, templates):
    from open_clip.transform import image_transform
    from torchvision.datasets import ImageFolder

    data = ImageFolder(str(root), transform=image_transform(CONFIG["vision_cfg"]["image_size"], is_train=False))
    loader = torch.utils.data.DataLoader(data, batch_size=7)
    return zc.evaluate(ref, loader, open_clip.get_tokenizer(NAME), classnames, templates, "cpu", amp=False)


@pytest.mark.parametrize("photos,templates,classes", [
    (PHOTOS, "openai", None),  # 6 classes: top-5 too; OpenAI's 80 templates
    (PHOTOS[:4], "simple", ["an astronaut", "a cat", "a cup of coffee", "a rocket"]),  # < 5 classes: no top-5
])
def test_zeroshot_equals_clip_benchmark(model, tmp_path, monkeypatch, photos, templates, classes):
    from pipeline import zeroshot
    from pipeline.data.text.prompts import TEMPLATE_SETS

    ref, ckpt = model
    root = _image_folder(tmp_path / "folder", photos)
    args = []
    if classes:
        (tmp_path / "names.txt").write_text("\n".join(classes) + "\n")
        args = [str(tmp_path / "names.txt")]
    cfg = load_config(EvalJobConfig, None, [])
    block = zeroshot.run(ckpt, str(root), str(tmp_path / "out"), cfg.eval, cfg.scaling, *args, templates=templates)
    monkeypatch.setattr(zc, "accuracy", _accuracy)
    cb_templates = json.loads((__import__("pathlib").Path(zc.__file__).parents[1] / "datasets" /
                               "en_zeroshot_classification_templates.json").read_text())["imagenet1k"]
    assert list(TEMPLATE_SETS["openai"]) == cb_templates  # the same 80, in the same order
    want = _reference(ref, root, classes or sorted(photos), cb_templates if templates == "openai"
                      else ["a photo of a {c}."])
    assert block["top1"] == pytest.approx(100 * want["acc1"], abs=1e-4)
    assert block["mean_per_class_recall"] == pytest.approx(100 * want["mean_per_class_recall"], abs=1e-4)
    if len(photos) >= 5:
        assert block["top5"] == pytest.approx(100 * want["acc5"], abs=1e-4)
    else:
        assert "top5" not in block and np.isnan(want["acc5"])
    assert block["images"] == 3 * len(photos) and block["n_templates"] == (80 if templates == "openai" else 1)
    written = json.loads((tmp_path / "out" / "zeroshot.json").read_text())
    assert written["top1"] == block["top1"] and len(written["per_class"]) == len(photos)
    assert "per-class recall" in (tmp_path / "out" / "zeroshot.html").read_text()


def test_zeroshot_classifier_rows_are_clip_benchmarks_columns(model):
    from pipeline import zeroshot
    from pipeline.encoder import load

    ref, ckpt = model
    names, templates = ["cat", "dog", "rocket"], ["a photo of a {c}.", "a drawing of the {c}."]
    ours = zeroshot.classifier(load(ckpt).encode_text, names, templates)
    theirs = zc.zero_shot_classifier(ref, open_clip.get_tokenizer(NAME), names, templates, "cpu", amp=False)
    assert (ours - theirs.T).abs().max() < 1e-5


def test_bad_class_names_and_templates_are_refused(tmp_path, model, capsys):
    from pipeline.cli import main

    _, ckpt = model
    root = _image_folder(tmp_path / "folder", PHOTOS[:2], per_class=1)
    (tmp_path / "names.txt").write_text("one name\n")
    (tmp_path / "t.txt").write_text("no placeholder here\n")
    for extra, said in ((["--classes", str(tmp_path / "names.txt")], "1 names for 2 class folders"),
                        (["--templates", str(tmp_path / "t.txt")], "has no {c}"),
                        (["--templates", "fancy"], "neither openai nor simple nor a file"),
                        (["--classes", str(tmp_path / "absent.txt")], "does not exist")):
        assert main(["zeroshot", "--checkpoint", ckpt, "--data", str(root), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err  # one line
    flat = tmp_path / "flat"
    _image_folder(flat, ["moon"], per_class=1)
    assert main(["zeroshot", "--checkpoint", ckpt, "--data", str(flat / "moon"), "--out", str(tmp_path / "o")]) == 2
    assert "one subfolder per class" in capsys.readouterr().err
    (root / "stray.jpg").write_bytes((root / PHOTOS[0] / "0.jpg").read_bytes())  # an image in no class folder
    assert main(["zeroshot", "--checkpoint", ckpt, "--data", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "holds images of its own" in capsys.readouterr().err
    assert not __import__("ray").is_initialized()  # every refusal came before any Ray work


def test_export_reads_back_with_embedding_reader_and_searches_with_faiss(model, tmp_path):
    faiss = pytest.importorskip("faiss")
    embedding_reader = pytest.importorskip("embedding_reader")
    from pipeline.index.embedding_passes import CAPTIONS, IMAGES, embed_to_parquet, read_columns, vectors_of
    from pipeline.index.export import export_clip_retrieval

    _, ckpt = model
    root = _image_folder(tmp_path / "gallery", PHOTOS[:3], per_class=2)
    (root / "chelsea" / "0.txt").write_text("a tabby cat")
    (root / "coffee" / "1.txt").write_text("a red cup of coffee")
    embed_to_parquet(ckpt, [f"{root}/{p}/" for p in PHOTOS[:3]], 32, str(tmp_path / "index"), in_driver_images=100,
                     captionless=True)
    done = export_clip_retrieval(str(tmp_path / "index"), str(tmp_path / "export"), part_rows=4)
    assert done == {"images": 6, "captioned": 2, "parts": 2, "dim": 32}
    reader = embedding_reader.EmbeddingReader(str(tmp_path / "export" / "img_emb"), file_format="parquet_npy",
                                              meta_columns=["image_path", "caption", "key"],
                                              metadata_folder=str(tmp_path / "export" / "metadata"))
    assert (reader.count, reader.dimension) == (6, 32)
    embs, metas = zip(*reader(batch_size=100, show_progress=False))
    emb, meta = np.concatenate(embs), metas[0]
    images = read_columns(str(tmp_path / "index" / IMAGES), ["key", "path", "vector"])
    assert meta["key"].tolist() == images.column("key").to_pylist()
    assert meta["image_path"].tolist() == [f"{root}/{k}.jpg" for k in images.column("key").to_pylist()]
    assert np.abs(emb - vectors_of(images)).max() < 2e-3  # float16, as clip-retrieval writes them
    captions = dict(zip(meta["key"], meta["caption"]))
    assert captions["chelsea/0"] == "a tabby cat" and captions["coffee/1"] == "a red cup of coffee"
    text = embedding_reader.EmbeddingReader(str(tmp_path / "export" / "text_emb"), file_format="npy")
    text_emb = np.concatenate([e for e, _ in text(batch_size=100, show_progress=False)])
    cap = read_columns(str(tmp_path / "index" / CAPTIONS), ["key", "vector"])
    row = meta["key"].tolist().index("chelsea/0")
    assert np.abs(text_emb[row] - vectors_of(cap)[cap.column("key").to_pylist().index("chelsea/0")]).max() < 2e-3
    index = faiss.IndexFlatIP(32)
    index.add(emb.astype(np.float32))
    _, found = index.search(vectors_of(images)[[4]], 1)
    assert meta["key"].iloc[int(found[0, 0])] == images.column("key").to_pylist()[4]
