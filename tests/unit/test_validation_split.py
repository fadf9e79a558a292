"""In-memory validation split over two gloo ranks scores what one rank scoring the whole set scores, even when
the ranks read the set's blocks in different orders and their BatchNorm statistics have drifted apart."""
import os

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

from pipeline.data.text.tokenizer import Tokenizer
from tests.gloo import process_group

WORDS = [f"w{i}" for i in range(30)]


class Towers(nn.Module):
    embed_dim = 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.BatchNorm1d(16))
        self.text = nn.EmbeddingBag(len(WORDS) + 2, 16)

    def encode_image(self, px):
        return nn.functional.normalize(self.image(px.float() / 255), dim=-1)

    def encode_text(self, tokens):
        return nn.functional.normalize(self.text(tokens), dim=-1)


def _val_set(seed=0, n=37):
    rng = np.random.default_rng(seed)
    keys = np.array([f"val/{i:04d}" for i in rng.permutation(n)], dtype=object)
    bags = []  # distinct bags of words: no two captions tie, so the scores cannot depend on float rounding
    while len(bags) < 2 * n:
        bag = tuple(sorted(rng.choice(len(WORDS), 3, replace=False)))
        if bag not in bags:
            bags.append(bag)
    words = iter(" ".join(WORDS[j] for j in bag) for bag in bags)
    caps = [[next(words) for _ in range(1 + i % 2)] for i in range(n)]
    import json
    return {"key": keys, "image": rng.integers(0, 255, (n, 3, 8, 8), dtype=np.uint8),
            "captions": np.array([json.dumps(c) for c in caps], dtype=object)}


def _blocks(rows, order):
    cuts = np.array_split(np.arange(len(rows["key"])), 4)
    return [{k: v[cuts[i]] for k, v in rows.items()} for i in order]


def _worker(rank, init_file, out):
    from pipeline.training.validation import ValidationSet

    with process_group(init_file, rank, 2):
        model, rows = Towers(), _val_set()
        with torch.no_grad():  # rank 1's running statistics drift, as they do after a step on its own batch
            model.image[2].running_mean += rank * 3.0
            model.image[2].running_var *= 1 + rank
        model.eval()
        tok = Tokenizer.from_counts({w: 1 for w in WORDS}, 6)
        order = [0, 1, 2, 3] if rank == 0 else [3, 1, 0, 2]
        val = ValidationSet(rank, 2, blocks=lambda: _blocks(rows, order), eval_batch=5)
        got = [val.run(model, tok, torch.device("cpu")) for _ in range(2)]  # the second from memory
        if rank == 0:
            torch.save(got, os.path.join(out, "split.pt"))


def test_split_validation_scores_the_whole_set_as_rank_0_would(tmp_path):
    from pipeline.training.validation import validate

    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    split = torch.load(tmp_path / "split.pt")

    class Stream:  # the whole set through one rank, in its streamed order
        def iter_batches(self, batch_size, **_):
            yield from _blocks(_val_set(), [0, 1, 2, 3])

    model = Towers().eval()
    whole = validate(model, Tokenizer.from_counts({w: 1 for w in WORDS}, 6), Stream(), torch.device("cpu"))
    assert split[0] == split[1]
    assert split[0]["rsum"] == whole["rsum"] and split[0]["i2t"] == whole["i2t"] and split[0]["t2i"] == whole["t2i"]
    assert whole["rsum"] < 600  # the towers are random: not a score every gallery gets
