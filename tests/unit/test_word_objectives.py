"""GloVe and skip-gram with negative sampling on co-occurrence counts, against loops written here, and trained
in-process on a tiny corpus (the Ray Train run is tests/integration/test_cca.py's embeddings test). No Ray."""
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.words.cooccurrence import cosine, count_cooccurrences
from pipeline.words.glove_sgns import GloVe, SkipGramNS, build, entry_loss, noise_distribution
from tests.gloo import process_group


def _entries(seed=0, vocab=9, n=40):
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.randint(2, vocab, (n,), generator=g), torch.randint(2, vocab, (n,), generator=g)
    counts = torch.rand(n, generator=g) * 150 + 0.2  # below and above x_max
    return rows, cols, counts


def test_glove_loss_matches_a_loop():
    model = GloVe(9, 4, x_max=100.0, alpha=0.75, seed=1)
    rows, cols, counts = _entries()
    w, wc, b, bc = (p.detach().numpy() for p in (model.w, model.w_ctx, model.b, model.b_ctx))
    total = 0.0
    for i, j, x in zip(rows.tolist(), cols.tolist(), counts.tolist()):
        f = (x / 100.0) ** 0.75 if x < 100.0 else 1.0
        total += f * (float(np.dot(w[i], wc[j])) + b[i] + bc[j] - math.log(x)) ** 2
    assert float(model(rows, cols, counts).detach()) == pytest.approx(total / len(rows), rel=1e-5)
    np.testing.assert_allclose(model.vectors(), w + wc)


def test_sgns_loss_matches_a_loop():
    model = SkipGramNS(9, 4, negatives=3, seed=1)
    with torch.no_grad():
        model.c.normal_(generator=torch.Generator().manual_seed(2))
    rows, cols, counts = _entries()
    noise = torch.randint(0, 9, (len(rows), 3), generator=torch.Generator().manual_seed(3))
    w, c = model.w.detach().numpy(), model.c.detach().numpy()
    logsig = lambda v: -math.log1p(math.exp(-v))  # noqa: E731
    total = 0.0
    for i, j, x, ns in zip(rows.tolist(), cols.tolist(), counts.tolist(), noise.tolist()):
        total += x * (logsig(float(np.dot(w[i], c[j]))) + sum(logsig(-float(np.dot(w[i], c[n]))) for n in ns))
    assert float(model(rows, cols, counts, noise).detach()) == pytest.approx(-total / float(counts.sum()), rel=1e-5)


def test_noise_distribution_is_the_unigram_mass_to_three_quarters():
    rows, counts = np.array([2, 2, 3, 4]), np.array([1.0, 3.0, 2.0, 0.5])
    p = noise_distribution(rows, counts, 6)
    mass = np.array([0, 0, 4.0, 2.0, 0.5, 0]) ** 0.75
    np.testing.assert_allclose(p, mass / mass.sum())


def _corpus():
    """Captions in which colours share contexts with colours and shapes with shapes."""
    rng = random.Random(0)
    words = ["[PAD]", "[UNK]", "a", "red", "blue", "green", "circle", "square", "cross", "small", "large"]
    caps = [["a", rng.choice(["small", "large"]), rng.choice(words[3:6]), rng.choice(words[6:9])] for _ in range(400)]
    index = {w: i for i, w in enumerate(words)}
    return words, count_cooccurrences([[index[w] for w in c] for c in caps], len(words), window=2)


def test_glove_and_sgns_trained_here_put_colours_with_colours():
    words, counts = _corpus()
    rows, cols = torch.from_numpy(counts.rows), torch.from_numpy(counts.cols)
    values = torch.from_numpy(counts.values).float()
    noise = torch.from_numpy(noise_distribution(counts.rows, counts.values, len(words))).float()
    e = SimpleNamespace(x_max=100.0, glove_power=0.75, negatives=5)
    for method in ("glove", "sgns"):
        model = build(method, len(words), 8, e, seed=0)
        opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            loss = entry_loss(model, rows, cols, values, noise, g)
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = dict(zip(words, model.vectors()))
        assert cosine(v["red"], v["blue"]) > cosine(v["red"], v["circle"]), method
        assert cosine(v["circle"], v["cross"]) > cosine(v["circle"], v["green"]), method



def _sharded_grad(rank, world, init_file, out):
    """One gloo worker: DDP over its share of the entries (every world-th, as word_embeddings deals them),
    divided by the step's global normaliser; rank 0 saves, per method, the gradient DDP applied (and the one a
    worker's own normaliser would have applied)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pipeline.distributed import all_reduce_mean
    from pipeline.words.glove_sgns import normaliser

    with process_group(init_file, rank, world):
        rows, cols, counts, noise = _skewed_entries()
        grads = {}
        for method in ("sgns", "glove"):
            for norm_kind in ("global", "local"):
                model = _fresh(method)
                ddp = DDP(model)
                mine = torch.arange(len(rows))[rank::world]
                norm = all_reduce_mean(normaliser(model, counts[mine])) if norm_kind == "global" else None
                args = (rows[mine], cols[mine], counts[mine]) + ((noise[mine],) if method == "sgns" else ())
                ddp(*args, norm).backward()
                grads[method, norm_kind] = [p.grad.clone() for p in model.parameters()]
        if rank == 0:
            torch.save(grads, f"{out}/grads.pt")


def _skewed_entries():
    """Entries whose counts differ a lot between the workers' shares: a per-worker normaliser then matters."""
    rows, cols, counts = _entries(seed=4, n=31)  # 31: the shares of 2 and of 3 workers differ in size too
    i = torch.arange(len(counts))
    counts = counts * torch.where(i % 2 == 0, 10.0, 0.1) * (1 + i % 3)
    noise = torch.randint(0, 9, (len(rows), 3), generator=torch.Generator().manual_seed(5))
    return rows, cols, counts, noise


def _fresh(method):
    model = SkipGramNS(9, 4, negatives=3, seed=1) if method == "sgns" else GloVe(9, 4, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=torch.Generator().manual_seed(6))
    return model


@pytest.mark.parametrize("world", [2, 3])
def test_the_gradient_on_several_workers_is_the_gradient_on_the_union(tmp_path, world):
    import torch.multiprocessing as mp

    mp.spawn(_sharded_grad, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    grads = torch.load(tmp_path / "grads.pt")
    rows, cols, counts, noise = _skewed_entries()
    for method in ("sgns", "glove"):
        model = _fresh(method)
        (model(rows, cols, counts, noise) if method == "sgns" else model(rows, cols, counts)).backward()
        for got, want in zip(grads[method, "global"], model.parameters()):
            torch.testing.assert_close(got, want.grad, rtol=1e-5, atol=1e-7)
        # what a worker's own normaliser gave: DDP's mean of per-worker ratios, not the ratio of the sums
        off = max(float((g - w.grad).norm() / w.grad.norm()) for g, w in zip(grads[method, "local"],
                                                                             model.parameters()))
        assert off > 0.01, (method, off)
