"""Text towers over word ids: mean bag-of-words (order-blind, the baseline) and a bidirectional GRU."""
from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B,L,D), mask (B,L) bool -> (B,D) mean over the unmasked positions."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class BagOfWords(nn.Module):
    def __init__(self, vocab_size: int, word_dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.out_dim = word_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,L) -> (B,word_dim)
        return masked_mean(self.embed(tokens), tokens != 0)


class BiGRU(nn.Module):
    """Bidirectional GRU over packed sequences; masked mean of both directions' states."""

    def __init__(self, vocab_size: int, word_dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.rnn = nn.GRU(word_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,L) -> (B,2H)
        mask = tokens != 0
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return masked_mean(out, mask)  # (B,L,2H) -> (B,2H)


TEXT_ARCHS = {"bow": BagOfWords, "gru": BiGRU}


def build_text_tower(arch: str, vocab_size: int, word_dim: int = 128, hidden: int = 256) -> nn.Module:
    """-> module with `.out_dim`, mapping (B,L) int64 ids (0 = padding) to (B, out_dim)."""
    if arch not in TEXT_ARCHS:
        raise ValueError(f"unknown text tower {arch!r}; choose one of {sorted(TEXT_ARCHS)}")
    return TEXT_ARCHS[arch](vocab_size, word_dim, hidden)
