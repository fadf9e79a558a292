"""The loop a user would write instead of the pipeline: one process, a smaller and simpler model than the
recipe's, no framework. Four conv + max-pool stages of 16-64 channels, a 128-unit bidirectional GRU over
whitespace words, symmetric InfoNCE with a learned temperature, AdamW at a constant rate, images decoded into
memory once, no augmentation, torch on two threads. `bench/time_to_accuracy.py --reference small-loop` runs it
beside the pipeline; only the scoring (`pipeline.metrics.retrieval_metrics`) is shared, so both are measured
by one ruler.
"""
from __future__ import annotations

import io
import json
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

BATCH, LR, EMBED, MAX_TOKENS = 128, 2e-3, 128, 24


def read(folder: Path, size: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Every sample of the split's tars: images as one uint8 (N, 3, S, S) tensor, and their captions."""
    images, captions = [], []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar}
            for name in sorted(n for n in members if n.endswith(".jpg")):
                meta = json.loads(tar.extractfile(members[name[:-4] + ".json"]).read())
                img = Image.open(io.BytesIO(tar.extractfile(members[name]).read())).convert("RGB")
                images.append(np.asarray(img.resize((size, size), Image.BILINEAR)))
                captions.append(meta.get("captions") or [meta["caption"]])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class Tokens:
    def __init__(self, captions: list[list[str]]):
        vocab = sorted({w for caps in captions for c in caps for w in words(c)})
        self.ids = {w: i + 2 for i, w in enumerate(vocab)}  # 0 pad, 1 unknown

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), MAX_TOKENS, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.ids.get(w, 1) for w in words(t)][:MAX_TOKENS]
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class Model(nn.Module):
    def __init__(self, vocab: int, size: int):
        super().__init__()
        layers, cin = [], 3
        for c in (16, 32, 64, 64):
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            cin = c
        self.cnn = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * (size // 16) ** 2, EMBED))
        self.embed = nn.Embedding(vocab, 128, padding_idx=0)
        self.gru = nn.GRU(128, 128, batch_first=True, bidirectional=True)
        self.text_proj = nn.Linear(256, EMBED)
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.cnn(x.float() / 255 - 0.5), dim=-1)

    def text(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens > 0).float().unsqueeze(-1)
        h, _ = self.gru(self.embed(tokens))
        return F.normalize(self.text_proj((h * mask).sum(1) / mask.sum(1).clamp(min=1)), dim=-1)


def evaluate(model: Model, tokens: Tokens, images: torch.Tensor, captions: list[list[str]]) -> float:
    from pipeline.metrics import retrieval_metrics

    flat = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    model.eval()
    with torch.no_grad():
        img = torch.cat([model.image(images[i:i + 256]) for i in range(0, len(images), 256)])
        txt = torch.cat([model.text(tokens(flat[i:i + 256])) for i in range(0, len(flat), 256)])
    model.train()
    return retrieval_metrics(img, txt, owner)["rsum"]


def run(data: Path, size: int, budget: float, seed: int = 0) -> dict:
    """Train until `budget` seconds (from the call, reading included), validating after every epoch.
    -> {"steps", "vals": [(seconds, epoch, rsum)], "firsts": {epoch: seconds}, "per_epoch", "end", "batch"}."""
    t0 = time.time()
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    images, captions = read(data / "train", size)
    val_images, val_captions = read(data / "val", size)
    tokens = Tokens(captions)
    model = Model(len(tokens.ids) + 2, size)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    rng = np.random.default_rng(seed)
    per_epoch, steps, vals, firsts, epoch = len(images) // BATCH, 0, [], {}, 0
    while time.time() - t0 < budget:
        epoch += 1
        order = torch.from_numpy(rng.permutation(len(images)))
        for b in range(per_epoch):
            if time.time() - t0 >= budget:
                break
            firsts.setdefault(epoch, time.time() - t0)
            pick = order[b * BATCH:(b + 1) * BATCH]
            texts = [captions[i][int(rng.integers(len(captions[i])))] for i in pick.tolist()]
            logits = model.logit_scale.exp().clamp(max=100) * model.image(images[pick]) @ model.text(tokens(texts)).T
            labels = torch.arange(len(pick))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        else:
            rsum = evaluate(model, tokens, val_images, val_captions)
            if time.time() - t0 <= budget:
                vals.append((time.time() - t0, epoch, rsum))
    return {"steps": steps, "vals": vals, "firsts": firsts, "per_epoch": per_epoch, "end": time.time() - t0,
            "batch": BATCH, "took": ""}
