"""Ray stays at the edges; every command has --help; bad input fails before any Ray work."""
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]

PURE = ["pipeline.config", "pipeline.models", "pipeline.losses", "pipeline.metrics", "pipeline.checkpoint",
        "pipeline.config.spaces", "pipeline.tune.results", "pipeline.storage", "pipeline.data.transforms",
        "pipeline.data.formats.karpathy", "pipeline.baselines.cca", "pipeline.baselines.features", "pipeline.words.cooccurrence",
        "pipeline.index.faiss_indexes", "pipeline.training.optimisation", "pipeline.rerank.fusion", "pipeline.rerank.mining",
        "pipeline.words.glove_sgns", "pipeline.baselines.autoencoder",
        "pipeline.data.epoch.plan", "pipeline.data.epoch.batcher", "pipeline.data.local_passes", "pipeline.gallery"]
# Modules at Ray's edge that import it only inside the functions that drive Ray Data: importable without it.
EDGE = ["pipeline.baselines.fitting", "pipeline.words.job", "pipeline.index.embedding_passes",
        "pipeline.index.sharded", "pipeline.tune.driver", "pipeline.rerank.job"]


def test_pure_modules_do_not_import_ray():
    code = f"import sys; import {', '.join(PURE + EDGE)}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# What a pure module's functions do when they run, not only what importing them does: none may import, start
# or connect to Ray. One call or more per pure module, on data written here.
CALLS = """
import sys, tempfile
import numpy as np, torch
from pipeline import checkpoint, gallery, losses, metrics
from pipeline.words import cooccurrence as ppmi
from pipeline.baselines.cca import CCAStats, fit_linear_cca
from pipeline.config import RunJobConfig, load_config
from pipeline.index import faiss_indexes
from pipeline.config import spaces
from pipeline.tune import results
from pipeline.data import local_passes
from pipeline.data.formats.synthetic import write_dataset
from pipeline.data.formats.shards import shard_names

out = tempfile.mkdtemp()
paths = [str(p) for p in write_dataset(out, 16, 8, seed=0)["val"]]
cfg = load_config(RunJobConfig, "configs/smoke.yaml", {"tune.space": {"loss.temperature": {"grid": [0.1, 0.5]}}})
assert len(spaces.plan(cfg)[1]) == 2
assert [r['t'] for r in results.rank_rows([{'t': 1, 'm': float('nan')}, {'t': 2, 'm': 0.5}], 'm')] == [2, 1]
assert local_passes.fits_in_driver(paths, 100)
batches = list(local_passes.eval_batches(paths, 16, batch_size=4))
g = gallery.embed_gallery(lambda px: torch.randn(len(px), 8), lambda caps: torch.randn(len(caps), 8), batches)
m = metrics.retrieval_metrics(g.image_emb, g.text_emb, g.text_to_image)
x, y = torch.randn(6, 8), torch.randn(6, 8)
losses.build_loss("infonce")(x, y).backward()
fit_linear_cca(CCAStats.of(np.random.rand(40, 5), np.random.rand(40, 4)), 2)
vecs = np.random.rand(50, 8).astype('float32')
assert faiss_indexes.measure(faiss_indexes.build_index(vecs, faiss_indexes.IndexSpec('hnsw'))[0], vecs, vecs[:5])
counts = ppmi.count_cooccurrences([[0, 1, 2], [2, 3, 1]], 4, window=2)
ppmi.word_vectors(counts, 2)
checkpoint.find_latest(out)
from pipeline.rerank.fusion import FusionScorer, rerank
from pipeline.rerank.mining import hardest_images
from pipeline.words.glove_sgns import GloVe
cand = hardest_images(g.text_emb, g.image_emb, g.text_to_image, 3)
rerank(FusionScorer("compact_bilinear", 8, 8, sketch_dim=16), g.text_emb, g.image_emb, cand, query_is_image=False)
GloVe(5, 4)(torch.tensor([2, 3]), torch.tensor([3, 4]), torch.tensor([2.0, 5.0])).backward()
print("ray" in sys.modules)
"""


def test_pure_modules_stay_off_ray_when_their_functions_run():
    out = subprocess.run([sys.executable, "-c", CALLS], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("argv", [[], ["run"], ["train"], ["tune"], ["cca"], ["baseline"], ["embeddings"], ["rerank"], ["index"], ["evaluate"], ["search"], ["serve"], ["data"],
                                  ["data", "synth"], ["data", "convert-karpathy"], ["data", "inspect"], ["keys"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: pipeline" in capsys.readouterr().out


def _cli(args, cwd):
    code = ("import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY'); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("extra,needle", [
    (["--set", "train.epoch=2"], "unknown key 'train.epoch' (did you mean train.epochs?)"),
    (["--set", "data.train=/no/such/dir"], "data.train: /no/such/dir does not exist"),
    (["--set", "train.batch_size=255"], "not divisible by scaling.num_workers=2"),
    (["--set", "data.train={tmp}/empty"], "data.train: the 1 shard(s) it matches hold no samples"),
])
def test_bad_input_is_one_line_before_ray(tmp_path, extra, needle):
    import tarfile

    cfg = tmp_path / "c.yaml"
    (tmp_path / "t").mkdir()
    (tmp_path / "empty").mkdir()
    tarfile.open(tmp_path / "empty" / "0.tar", "w").close()
    with tarfile.open(tmp_path / "t" / "0.tar", "w") as tar:
        tar.add(cfg.parent / "empty" / "0.tar", arcname="k.txt")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    cfg.write_text(f"data: {{train: {tmp_path}/t, val: {tmp_path}/t}}\n")
    out = _cli(["train", "--config", str(cfg), *extra], tmp_path)
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr and out.stdout.strip() == "NO_RAY"
