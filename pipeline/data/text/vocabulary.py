"""Which tokenizer a training job uses (data.tokenizer), built on the driver before any training:

    word        the vocabulary of the training captions (`tokenizer.Tokenizer`)
    char        the characters of the training captions (`tokenizer.CharTokenizer`; model.text.arch=char_cnn_rnn)
    bpe         a byte-level BPE trained on the training captions' words (`subword.BPETokenizer`)
    pretrained  the text tower's own: an hf: folder's tokenizer.json, or OpenCLIP's tokenizer for the model

`word`, `char` and `bpe` come from the word counts of the caption pass; `pretrained` needs none of them (the pass still
counts the samples, for steps per epoch and the skip fraction).
"""
from __future__ import annotations

from collections import Counter

from pipeline.data.text.tokenizer import CharTokenizer, Tokenizer

# BPE is trained from word counts, not the captions themselves: merges depend only on how often each word
# (and so each symbol pair) occurs. Counts are scaled down so that at most this many words are fed to the
# trainer; ratios, and so the merge order, are kept up to rounding.
BPE_TRAIN_WORDS = 5_000_000


def bpe_corpus(counts: Counter, budget: int = BPE_TRAIN_WORDS) -> list[str]:
    """Word counts -> strings for the BPE trainer, each word repeated its (scaled) count times, in chunks."""
    total = sum(counts.values())
    scale = min(1.0, budget / total) if total else 1.0
    lines = []
    for word, count in counts.items():
        n = max(1, round(count * scale))
        for start in range(0, n, 1000):
            lines.append(" ".join([word] * min(1000, n - start)))
    return lines


def pretrained_tokenizer(model_cfg, max_tokens: int):
    """The text tower's own tokenizer: OpenCLIP's for model.arch=open_clip:..., the folder's for hf:."""
    from pipeline.data.text import subword

    if model_cfg.open_clip:
        from pipeline.models.pretrained import open_clip_config

        text_cfg = open_clip_config(model_cfg.open_clip).get("text_cfg", {})
        try:
            return subword.open_clip_tokenizer(model_cfg.open_clip, model_cfg.tokenizer or None, text_cfg=text_cfg)
        except FileNotFoundError:
            raise FileNotFoundError(f"open_clip:{model_cfg.open_clip} uses the Hugging Face tokenizer "
                                    f"{text_cfg.get('hf_tokenizer_name')}, which cannot be downloaded here: set "
                                    "model.tokenizer to a local copy of that repo's tokenizer files "
                                    "(tokenizer.json)") from None
    folder = model_cfg.text.arch[len("hf:"):]
    return subword.HFTokenizer.from_dir(folder, max_tokens)


def make_tokenizer(data_cfg, model_cfg, counts: Counter | None):
    """The job's tokenizer; `counts` (word -> count over the training captions) for word and bpe."""
    if data_cfg.tokenizer == "pretrained":
        return pretrained_tokenizer(model_cfg, data_cfg.max_tokens)
    if data_cfg.tokenizer == "bpe":
        from pipeline.data.text.subword import BPETokenizer

        return BPETokenizer.train(bpe_corpus(counts or Counter()), data_cfg.vocab_max_size, data_cfg.max_tokens)
    cls = CharTokenizer if data_cfg.tokenizer == "char" else Tokenizer
    return cls.from_counts(counts or Counter(), data_cfg.max_tokens, data_cfg.vocab_min_count, data_cfg.vocab_max_size)


def describe(tokenizer) -> str:
    """'vocabulary 64 words' / 'BPE tokenizer, 4000 ids' / ... for the console."""
    kind = getattr(tokenizer, "kind", "word")
    if kind == "word":
        return f"vocabulary {len(tokenizer)} words"
    if kind == "char":
        return f"alphabet {len(tokenizer)} characters, {tokenizer.max_tokens} per caption"
    return {"bpe": "BPE tokenizer", "hf": "Hugging Face tokenizer", "open_clip": "OpenCLIP tokenizer"}[kind] + \
        f", {len(tokenizer)} ids, {tokenizer.max_tokens} tokens"
