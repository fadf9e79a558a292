"""Text towers over word ids (0 = padding, right-padded): mean bag-of-words (order-blind, the baseline),
bidirectional GRU/LSTM, a CNN over word windows and a small transformer; and one over character ids, the
char-CNN-RNN. None of them sees the padding: the same caption padded to any length gives the same output. Word
embeddings start random or from a vector file.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import registry

from pipeline.models.memory import run_checkpointed
from pipeline.models.word_vectors import load_word_vectors


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B,L,D), mask (B,L) bool -> (B,D) mean over the unmasked positions."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class BagOfWords(nn.Module):
    def __init__(self, embed: nn.Embedding):
        super().__init__()
        self.embed = embed
        self.out_dim = embed.embedding_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,L) -> (B,word_dim)
        return masked_mean(self.embed(tokens), tokens != 0)


class BiRNN(nn.Module):
    """Bidirectional GRU or LSTM over packed sequences (the padding never enters the recurrence). Pooling:
    `mean` of both directions' states over the words, or `last`: the forward state after the last word joined
    with the backward state after the first."""

    def __init__(self, embed: nn.Embedding, cell: str, hidden: int, pooling: str = "mean"):
        super().__init__()
        self.embed = embed
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        self.rnn = rnn(embed.embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.pooling = pooling
        self.out_dim = 2 * hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,L) -> (B,2H)
        mask = tokens != 0
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, h_n = self.rnn(packed)
        if self.pooling == "last":
            h_n = h_n[0] if isinstance(h_n, tuple) else h_n  # LSTM: (h, c); (2,B,H), back in batch order
            return torch.cat([h_n[0], h_n[1]], dim=-1)  # (B,2H)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return masked_mean(out, mask)  # (B,L,2H) -> (B,2H)


class TextCNN(nn.Module):
    """Convolutions of several widths over the word vectors, ReLU, max over the windows that start inside
    the caption (Kim 2014). A caption shorter than a width gets one window, completed with zero vectors."""

    def __init__(self, embed: nn.Embedding, filters: int, widths: tuple[int, ...] = (1, 2, 3)):
        super().__init__()
        self.embed = embed
        self.widths = tuple(widths)
        self.convs = nn.ModuleList(nn.Conv1d(embed.embedding_dim, filters, w) for w in self.widths)
        self.out_dim = filters * len(self.widths)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,L) -> (B, filters * n_widths)
        mask = tokens != 0  # (B,L)
        # Zeroing padded positions makes windows that reach past the caption independent of the padding row.
        x = (self.embed(tokens) * mask.unsqueeze(-1)).transpose(1, 2)  # (B,d,L)
        n = mask.sum(1, keepdim=True)  # (B,1) words per caption
        pooled = []
        for w, conv in zip(self.widths, self.convs):
            y = F.relu(conv(F.pad(x, (0, max(0, w - x.shape[-1])))))  # (B,F,T) with T = max(L,w) - w + 1
            starts = torch.arange(y.shape[-1], device=y.device)  # (T,)
            valid = starts.unsqueeze(0) <= (n - w).clamp(min=0)  # (B,T): windows starting inside the caption
            pooled.append(y.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(-1))  # (B,F)
        return torch.cat(pooled, dim=-1)


class TextTransformer(nn.Module):
    """Pre-norm transformer encoder with learned positions and key-padding masks; pooled by a learned [CLS]
    token prepended to the words, or by the masked mean of the words' outputs."""

    def __init__(self, embed: nn.Embedding, width: int, layers: int, heads: int, max_tokens: int,
                 pooling: str = "mean"):
        super().__init__()
        self.embed = embed
        # Word vectors (e.g. 300-d GloVe) are mapped to the model width, so that width need not match them.
        self.proj = nn.Linear(embed.embedding_dim, width) if embed.embedding_dim != width else nn.Identity()
        self.pooling, self.max_tokens = pooling, max_tokens
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02) if pooling == "cls" else None
        self.pos = nn.Parameter(torch.randn(1, max_tokens + (pooling == "cls"), width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out_dim = width
        self.grad_checkpointing = False  # model.text.grad_checkpointing: each layer's activations recomputed

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,L) -> (B,width)
        if tokens.shape[1] > self.max_tokens:
            raise ValueError(f"captions of {tokens.shape[1]} tokens, but the transformer has positions for "
                             f"{self.max_tokens} (data.max_tokens when it was built)")
        mask = tokens != 0  # (B,L)
        mask[:, 0] = True  # an empty caption still attends somewhere: a fully masked row would give NaN
        x = self.proj(self.embed(tokens))  # (B,L,W)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B,1+L,W)
            mask = torch.cat([mask.new_ones(x.shape[0], 1), mask], dim=1)
        x = x + self.pos[:, :x.shape[1]]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for layer in self.encoder.layers:  # what nn.TransformerEncoder does, a checkpoint around each layer
                x = run_checkpointed([layer], x, src_key_padding_mask=~mask)
        else:
            x = self.encoder(x, src_key_padding_mask=~mask)
        x = self.norm(x)  # (B,·,W)
        return x[:, 0] if self.cls is not None else masked_mean(x, mask)


class CharCNNRNN(nn.Module):
    """Reed et al.'s char-CNN-RNN (fine-grained visual descriptions, their best text encoder): characters ->
    temporal convolutions, each followed by max pooling (kernel 4, pool 3; after three, a step covers about 50
    characters) -> a bidirectional GRU over the pooled steps -> mean over them. A misspelt word shares most of
    its characters, and so most of its convolution responses, with the word it should have been.

    The padding stays out: embeddings are zeroed past the caption and every layer's output is masked to the
    caption's (pooled) length, so windows never depend on how far a caption was padded."""

    KERNEL, POOL, LAYERS = 4, 3, 3

    def __init__(self, embed: nn.Embedding, channels: int, hidden: int):
        super().__init__()
        self.embed = embed
        dims = [embed.embedding_dim] + [channels] * self.LAYERS
        self.convs = nn.ModuleList(nn.Conv1d(a, b, self.KERNEL) for a, b in zip(dims, dims[1:]))
        self.rnn = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B,L) character ids -> (B,2H)
        mask = tokens != 0  # (B,L)
        n = mask.sum(1).clamp(min=1)  # (B,) characters per caption
        x = (self.embed(tokens) * mask.unsqueeze(-1)).transpose(1, 2)  # (B,c,L)
        for conv in self.convs:
            x = F.relu(conv(F.pad(x, (1, self.KERNEL - 2))))  # (B,C,L): step t sees characters t-1 .. t+2
            x = x * (torch.arange(x.shape[-1], device=x.device) < n.unsqueeze(1)).unsqueeze(1)
            x = F.max_pool1d(F.pad(x, (0, -x.shape[-1] % self.POOL)), self.POOL)  # (B,C,ceil(L/3))
            n = (n + self.POOL - 1) // self.POOL
        packed = nn.utils.rnn.pack_padded_sequence(x.transpose(1, 2), n.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[-1])
        steps = torch.arange(x.shape[-1], device=x.device).unsqueeze(0) < n.unsqueeze(1)  # (B,T)
        return masked_mean(out, steps)  # (B,T,2H) -> (B,2H)


POOLINGS, TEXT_ARCHS = registry.TEXT_POOLINGS, registry.TEXT_ARCHS  # arch -> its poolings, default first


def build_embedding(vocab_size: int, word_dim: int, path: str = "", freeze: bool = False,
                    vocab: list[str] | None = None) -> tuple[nn.Embedding, dict | None]:
    """-> (embedding (V, word_dim) with row 0 = padding, vocabulary coverage or None). With `path`, the words of
    `vocab` found in the vector file take its vectors; the rest keep a random init at the file's scale."""
    embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
    coverage = None
    if path:
        if vocab is None or len(vocab) != vocab_size:
            raise ValueError("model.text.embeddings.path needs the vocabulary's words: pass vocab=tokenizer.vocab")
        vectors, found, coverage = load_word_vectors(path, vocab, word_dim)  # (V,d), (V,)
        with torch.no_grad():
            if found.any():  # N(0,1) rows would dwarf GloVe's (std ~0.4): match the loaded vectors' spread
                embed.weight.mul_(vectors[found].std())
                embed.weight[found] = vectors[found]
            embed.weight[0] = 0.0
    embed.weight.requires_grad_(not freeze)
    return embed, coverage


def build_text_tower(cfg, vocab_size: int, max_tokens: int = 32, vocab: list[str] | None = None,
                     load_vectors: bool = True) -> nn.Module:
    """cfg: a `TextTowerConfig`. -> module with `.out_dim` and `.coverage` (dict, or None without a vector file),
    mapping (B,L) int64 ids (0 = padding) to (B, out_dim). `load_vectors=False` skips the vector file (the
    caller loads trained weights over it)."""
    if cfg.arch not in POOLINGS:
        raise ValueError(f"unknown text tower {cfg.arch!r}; choose one of {list(TEXT_ARCHS)}")
    pooling = cfg.pooling or POOLINGS[cfg.arch][0]
    if pooling not in POOLINGS[cfg.arch]:
        raise ValueError(f"model.text.pooling={pooling!r} does not apply to {cfg.arch}; use one of "
                         f"{list(POOLINGS[cfg.arch])}")
    emb = cfg.embeddings
    embed, coverage = build_embedding(vocab_size, cfg.word_dim, emb.path if load_vectors else "", emb.freeze,
                                      vocab)
    if cfg.arch == "bow":
        tower = BagOfWords(embed)
    elif cfg.arch in ("gru", "lstm"):
        tower = BiRNN(embed, cfg.arch, cfg.hidden, pooling)
    elif cfg.arch == "cnn":
        tower = TextCNN(embed, cfg.hidden, tuple(cfg.cnn_widths))
    elif cfg.arch == "char_cnn_rnn":
        tower = CharCNNRNN(embed, cfg.hidden, cfg.hidden)
    else:
        tower = TextTransformer(embed, cfg.hidden, cfg.layers, cfg.heads, max_tokens, pooling)
    tower.coverage = coverage
    return tower
