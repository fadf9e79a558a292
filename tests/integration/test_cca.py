"""CCA baselines and caption word vectors through Ray Data, on the smoke data, in the shared local Ray."""
import glob
import json

import numpy as np

from pipeline.baselines.cca import CCAStats
from pipeline.cli import main
from pipeline.config import RunJobConfig, load_config

from .conftest import smoke_args

# Chance rsum on the smoke validation split (64 images x 5 captions): sum over K of K/64 (t2i) and about
# 1 - C(315, K)/C(320, K) (i2t), for K = 1, 5, 10: about 50.
CHANCE_RSUM = 50


def _cfg(data, tmp_path, *extra):
    args = smoke_args(data, tmp_path, "cca", *extra)
    return load_config(RunJobConfig, args[1], [a for a in args[2:] if a != "--set"])


def test_cca_command_writes_the_run_report(ray_cluster, smoke_data, tmp_path, capsys):
    assert main(["cca", *smoke_args(smoke_data, tmp_path, "cca")]) == 0
    out = capsys.readouterr().out
    rep_dir = tmp_path / "cca" / "baselines" / "linear_cca"
    assert "linear CCA: pixels 16x16 + bag of words" in out and str(rep_dir / "report" / "report.html") in out
    for path in ("report/report.json", "report/report.md", "report/report.html", "cca.npz"):
        assert (rep_dir / path).exists(), path
    rep = json.loads((rep_dir / "report" / "report.json").read_text())
    assert rep["n_images"] == 64 and rep["n_captions"] == 320
    assert set(rep["i2t"]) == {"R@1", "R@5", "R@10", "medr", "meanr"} and set(rep["index"]) >= {"type", "qps"}
    assert rep["rsum"] > 2 * CHANCE_RSUM, rep["rsum"]
    assert rep["data"]["skipped"]["train"]["corrupt_image"] >= 1  # the fault shard's samples were counted

    kernel = tmp_path / "kernel"
    assert main(["cca", *smoke_args(smoke_data, tmp_path, "cca", "--set", "cca.kind=kernel",
                                    "--set", "cca.kernel_dim=256", "--set", "cca.kernel_map=nystrom",
                                    "--set", "eval.in_driver_images=0"),  # the gallery by Ray Data's actors
                 "--out", str(kernel)]) == 0
    rep = json.loads((kernel / "report" / "report.json").read_text())
    assert rep["checkpoint"].startswith("kernel CCA (nystrom, 256)") and rep["rsum"] > 2 * CHANCE_RSUM

    # `baseline` is the command's general name; the bimodal autoencoder writes the same report, and its weights
    assert main(["baseline", *smoke_args(smoke_data, tmp_path, "cca", "--set", "cca.ae_epochs=80"),
                 "--kind", "autoencoder"]) == 0
    assert "reconstruction loss" in capsys.readouterr().out
    ae = tmp_path / "cca" / "baselines" / "autoencoder"
    rep = json.loads((ae / "report" / "report.json").read_text())
    assert rep["checkpoint"].startswith("bimodal autoencoder (512 hidden, code 64)") and rep["rsum"] > 2 * CHANCE_RSUM
    assert "to_code.weight" in np.load(ae / "autoencoder.npz").files


def _in_memory_rows(paths, image_size):
    """The eval rows of every shard, read and prepared in this process, without Ray."""
    from pipeline.data.formats.shards import iter_tar_samples
    from pipeline.data.transforms import prepare_eval_batch

    pixels, captions = [], []
    for p in paths:
        with open(p, "rb") as f:
            rows = list(iter_tar_samples(f, p.rsplit("/", 1)[-1]))
        batch = {k: [r[k] for r in rows] for k in ("key", "image", "txt", "json", "problem")}
        out, _ = prepare_eval_batch({**batch, "seed": [0] * len(rows)}, image_size)
        pixels.append(out["image"])
        captions += [json.loads(c) for c in out["captions"]]
    return np.concatenate(pixels), captions


def test_distributed_statistics_equal_in_memory(ray_cluster, smoke_data, tmp_path):
    from pipeline.baselines.fitting import Passes, accumulate_stats, build_featurizer

    cfg = _cfg(smoke_data, tmp_path, "--set", "cca.pixel_size=4")
    paths = sorted(glob.glob(str(smoke_data / "train" / "*.tar")))
    assert len(paths) >= 2
    features = build_featurizer(cfg.cca, cfg.data, cfg.model, train_paths=paths)
    stats = accumulate_stats(paths, features, cfg.data.image_size, Passes(num_actors=2))
    pixels, captions = _in_memory_rows(paths, cfg.data.image_size)
    ref = CCAStats.of(*features.pairs(pixels, captions))
    assert stats.n == ref.n == sum(len(c) for c in captions)
    for name in ("mean_x", "mean_y", "cxx", "cyy", "cxy"):
        np.testing.assert_allclose(getattr(stats, name), getattr(ref, name), rtol=1e-9, atol=1e-9)

    # Shards whose stats files count them as few enough are featurised in the driver: the same statistics.
    val = sorted(glob.glob(str(smoke_data / "val" / "*.tar")))
    here = accumulate_stats(val, features, cfg.data.image_size, Passes(max_in_driver=10_000))
    ref = CCAStats.of(*features.pairs(*_in_memory_rows(val, cfg.data.image_size)))
    assert here.n == ref.n > 0
    for name in ("mean_x", "mean_y", "cxx", "cyy", "cxy"):
        np.testing.assert_allclose(getattr(here, name), getattr(ref, name), rtol=1e-9, atol=1e-9)


def test_embeddings_command_writes_loadable_vectors(ray_cluster, smoke_data, tmp_path, capsys):
    from pipeline.data.ingest import expand_paths, scan_training_data
    from pipeline.data.text.tokenizer import split_words
    from pipeline.words.job import count_dataset
    from pipeline.models.word_vectors import load_word_vectors
    from pipeline.words.cooccurrence import cosine, count_cooccurrences

    out = tmp_path / "words.txt"
    assert main(["embeddings", *smoke_args(smoke_data, tmp_path, "emb"), "--out", str(out), "--dim", "16"]) == 0
    assert f"word vectors: {out}" in capsys.readouterr().out
    cfg = _cfg(smoke_data, tmp_path)
    paths = expand_paths(cfg.data.train)
    tokenizer = scan_training_data(paths, cfg.data).tokenizer
    vectors, found, coverage = load_word_vectors(str(out), tokenizer.vocab, dim=16)
    assert coverage["fraction"] == 1.0 and coverage["file_words"] == len(tokenizer) - 2
    v = {w: vectors[i].numpy() for i, w in enumerate(tokenizer.vocab)}
    assert cosine(v["red"], v["blue"]) > cosine(v["red"], v["circle"])  # colours share their contexts
    assert cosine(v["circle"], v["square"]) > cosine(v["circle"], v["blue"])

    # the per-block counts merged on the driver equal one count over every caption read here
    counts, tokens, n_caps = count_dataset(paths, tokenizer, window=4, weighting="harmonic")
    caps = _in_memory_captions(paths)
    ids = [[tokenizer.index.get(w, 1) for w in split_words(c)] for c in caps]
    assert n_caps == len(caps) and tokens == sum(len(t) for t in ids)
    np.testing.assert_allclose(counts.dense(), count_cooccurrences(ids, len(tokenizer), 4).dense())

    # GloVe trained on the 2 Ray Train workers from the same counts: the same file format, the same structure
    # (the file's vectors are centred: the component they all share is taken out)
    glove = tmp_path / "glove.txt"
    assert main(["embeddings", *smoke_args(smoke_data, tmp_path, "emb"), "--out", str(glove), "--dim", "16",
                 "--method", "glove"]) == 0
    out = capsys.readouterr().out
    assert "by glove" in out and "[embeddings] glove: loss" in out, out
    vectors, _, coverage = load_word_vectors(str(glove), tokenizer.vocab, dim=16)
    v = {w: vectors[i].numpy() for i, w in enumerate(tokenizer.vocab)}
    assert coverage["fraction"] == 1.0 and abs(float(vectors[2:].mean(0).abs().max())) < 1e-4
    assert cosine(v["red"], v["blue"]) > cosine(v["red"], v["circle"])
    assert cosine(v["circle"], v["square"]) > cosine(v["circle"], v["blue"])


def _in_memory_captions(paths):
    """Every caption of every sample with an image member (decodable or not), as the vocabulary scan counts."""
    from pipeline.data.formats.shards import iter_tar_samples
    from pipeline.data.transforms import parse_captions

    caps = []
    for p in paths:
        with open(p, "rb") as f:
            for row in iter_tar_samples(f, p.rsplit("/", 1)[-1], with_images=False):
                if not row["problem"] and row["has_image"]:
                    caps += parse_captions(row["txt"], row["json"])[0]
    return caps
