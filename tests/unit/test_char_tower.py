"""The character-level text tower (Reed et al.'s char-CNN-RNN) and its tokenizer, and what the tower is for: a
caption with misspelt words still finds its image, where the word-level GRU loses those words to [UNK]."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError, TextTowerConfig, TrainJobConfig, build, load_config
from pipeline.data.text.subword import tokenizer_from_dict
from pipeline.data.formats.synthetic import COLOURS, SHAPES, SIZE_WORDS
from pipeline.data.text.tokenizer import PAD, UNK, CharTokenizer, Tokenizer, count_words
from pipeline.data.formats.typos import misspell, misspell_word
from pipeline.models.text import build_text_tower


def test_char_tokenizer_alphabet_encoding_and_roundtrip():
    tok = CharTokenizer.from_counts(count_words(["a red box", "a red ball"]), max_tokens=12)
    assert tok.vocab[:2] == [PAD, UNK] and set(tok.vocab[2:]) == set("aredboxl ")
    assert tok.vocab[2] == " "  # the most frequent: one per word
    ids = tok.encode_batch(["A  Red\tBox!", ""])
    assert tok.decode(ids[0]) == "a red box" + tok.vocab[1]  # whitespace collapsed, '!' unseen -> [UNK]
    assert ids[1].tolist() == [1] + [0] * 11  # an empty caption: a lone [UNK]
    assert len(tok.encode("a red box and a red ball")) == 12  # max_tokens counts characters
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, CharTokenizer) and again.vocab == tok.vocab
    assert again.encode_batch(["a red box"]).tolist() == tok.encode_batch(["a red box"]).tolist()


def test_char_tower_ignores_padding_across_pooling_windows():
    """Captions of lengths around the pooling steps (3, 9, 27 characters), padded to different lengths."""
    torch.manual_seed(0)
    tower = build_text_tower(build(TextTowerConfig, {"arch": "char_cnn_rnn", "word_dim": 8, "hidden": 12}), 30,
                             max_tokens=64).eval()
    lengths = [1, 3, 8, 9, 10, 26, 28, 40]
    tok = torch.zeros(len(lengths), 40, dtype=torch.long)
    for i, n in enumerate(lengths):
        tok[i, :n] = torch.randint(2, 30, (n,))
    with torch.no_grad():
        out = tower(tok)
        padded = tower(F.pad(tok, (0, 23)))
        alone = torch.cat([tower(tok[i:i + 1, :n]) for i, n in enumerate(lengths)])
    assert out.shape == (len(lengths), 24)
    assert torch.allclose(out, padded, atol=1e-5) and torch.allclose(out, alone, atol=1e-5)


def test_misspell_keeps_first_and_last_letters_and_short_words():
    rng = random.Random(0)
    for word in ["circle", "green", "left", "yellow", "tiny"] * 20:
        bad = misspell_word(word, rng)
        assert bad != word and bad[0] == word[0] and bad[-1] == word[-1] and abs(len(bad) - len(word)) <= 1
    assert misspell("a red box, on top", 1.0, rng) == "a red box, on top"  # no word of 4+ letters
    assert misspell("a small green circle", 0.0, rng) == "a small green circle"
    assert all(w != v for w, v in zip("small green circle".split(), misspell("small green circle", 1.0, rng).split()))


def _captions(rng: random.Random, n: int) -> tuple[list[str], torch.Tensor]:
    """Captions of the demo's words naming one of 28 (colour, shape) classes; -> (captions, (n,) classes)."""
    colours, sizes = list(COLOURS), [w for ws in SIZE_WORDS.values() for w in ws]
    caps, labels = [], []
    for _ in range(n):
        c, s = rng.randrange(len(colours)), rng.randrange(len(SHAPES))
        template = rng.choice(["a {z} {c} {s}", "there is a {z} {c} {s}", "a {c} {s}, {z}", "one {z} {c} {s} here"])
        caps.append(template.format(z=rng.choice(sizes), c=colours[c], s=SHAPES[s]))
        labels.append(c * len(SHAPES) + s)
    return caps, torch.tensor(labels)


def _fit(arch: str, tokenizer, captions: list[str], labels: torch.Tensor, targets: torch.Tensor, steps: int = 150):
    """A text tower and projection trained to put each caption on its class's fixed unit vector (the image side
    of the joint space, frozen). -> the caption encoder."""
    torch.manual_seed(0)
    tower = build_text_tower(build(TextTowerConfig, {"arch": arch, "word_dim": 16, "hidden": 32}), len(tokenizer),
                             tokenizer.max_tokens)
    head = nn.Linear(tower.out_dim, targets.shape[1])
    opt = torch.optim.Adam([*tower.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def encode(caps: list[str]) -> torch.Tensor:  # (n, d) unit vectors
        return F.normalize(head(tower(torch.from_numpy(tokenizer.encode_batch(caps)))), dim=1)

    for _ in range(steps):
        idx = torch.randint(0, len(captions), (64,), generator=g)
        loss = F.cross_entropy(encode([captions[i] for i in idx]) @ targets.T * 10, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    tower.eval()
    return encode


def test_misspelt_captions_still_find_their_image_with_the_char_tower_not_the_word_gru():
    rng = random.Random(0)
    train, train_labels = _captions(rng, 1000)
    test, test_labels = _captions(rng, 500)
    typos = [misspell(c, 1.0, rng) for c in test]  # every word of 4+ letters misspelt: colours, shapes, sizes
    targets = F.normalize(torch.randn(len(COLOURS) * len(SHAPES), 16, generator=torch.Generator().manual_seed(1)), dim=1)
    counts = count_words(train)
    r1 = {}
    for arch, tokenizer in (("gru", Tokenizer.from_counts(counts, 16)),
                            ("char_cnn_rnn", CharTokenizer.from_counts(counts, 64))):
        encode = _fit(arch, tokenizer, train, train_labels, targets)
        with torch.no_grad():
            r1[arch] = [float(((encode(c) @ targets.T).argmax(1) == test_labels).float().mean()) for c in (test, typos)]
    assert r1["gru"][0] > 0.95 and r1["char_cnn_rnn"][0] > 0.95, r1  # both learnt the clean captions
    assert r1["gru"][1] < 0.3, r1  # the word tower lost the misspelt words to [UNK]
    assert r1["char_cnn_rnn"][1] > 0.6, r1  # the characters they share with the right word carry them


@pytest.mark.parametrize("overrides,match", [
    (["model.text.arch=char_cnn_rnn"], "model.text.arch=char_cnn_rnn reads characters: set data.tokenizer=char"),
    (["data.tokenizer=char"], "data.tokenizer=char counts characters: data.max_tokens=32"),
])
def test_char_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainJobConfig, None, ["data.train=a", "data.val=b", *overrides])
    assert load_config(TrainJobConfig, None, ["data.train=a", "data.val=b", "data.tokenizer=char",
                                              "data.max_tokens=128", "model.text.arch=char_cnn_rnn"])
