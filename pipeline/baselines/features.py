"""The CCA baselines as encoders: features of each view (downsampled pixels or a frozen image tower; bag of
words, mean word vectors or a frozen text tower), the optional kernel maps, and the canonical projection, so
a fitted baseline answers `encode_image` / `encode_text` like a trained checkpoint. No Ray here.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.baselines.cca import LinearCCA, build_kernel_map
from pipeline.data.text.tokenizer import Tokenizer, split_words
from pipeline.data.transforms import pil_pixels
from pipeline.registry import N_SPECIAL

FIRST_WORD = N_SPECIAL  # ids 0, 1: [PAD], [UNK]


def describe(cca_cfg) -> str:
    """'linear CCA: pixels 16x16 + bow' and the like, for reports and summaries."""
    c = cca_cfg
    img = f"pixels {c.pixel_size}x{c.pixel_size}" if c.image_features == "pixels" else "image tower"
    txt = {"bow": "bag of words", "word_vectors": "mean word vectors", "tower": "text tower"}[c.text_features]
    kind = {"linear": "linear CCA", "kernel": f"kernel CCA ({c.kernel_map}, {c.kernel_dim})",
            "autoencoder": f"bimodal autoencoder ({c.ae_hidden} hidden, code {c.k})"}[c.kind]
    return f"{kind}: {img} + {txt}"


def load_towers(cca_cfg, model_cfg, tokenizer: Tokenizer):
    """The frozen model whose towers give 'tower' features, and the tokenizer to use with it: cca.checkpoint's
    (towers as trained there) or model.* at random init (model.image.weights still applies)."""
    from pipeline.models import build_model

    if cca_cfg.checkpoint:
        from pipeline.encoder import load

        enc = load(cca_cfg.checkpoint)
        return enc.model, enc.tokenizer
    torch.manual_seed(cca_cfg.seed)
    model = build_model(model_cfg, len(tokenizer), vocab=tokenizer.vocab, max_tokens=tokenizer.max_tokens)
    return model.eval(), tokenizer


class Featurizer:
    """Raw features of both views; `kernel_x` / `kernel_y`, when set, map them for kernel CCA."""

    def __init__(self, cca_cfg, tokenizer: Tokenizer, model=None, word_vectors: np.ndarray | None = None):
        self.cfg = cca_cfg
        self.tokenizer = tokenizer
        self.model = model
        self.word_vectors = word_vectors  # (V, d) rows aligned with the tokenizer's ids
        self.n_bow = max(1, min(cca_cfg.bow_words, len(tokenizer) - FIRST_WORD))
        self.kernel_x = self.kernel_y = None

    # -- raw features
    @torch.no_grad()
    def image_raw(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) uint8 -> (n, dx) float64."""
        x = torch.as_tensor(np.asarray(pixels)).float() / 255.0
        if self.cfg.image_features == "pixels":
            return F.adaptive_avg_pool2d(x, self.cfg.pixel_size).flatten(1).double().numpy()
        m = self.model
        return m.image_tower((x - m.mean) / m.std).double().numpy()

    @torch.no_grad()
    def text_raw(self, captions: list[str]) -> np.ndarray:
        """m captions -> (m, dy) float64."""
        kind = self.cfg.text_features
        if kind == "tower":
            tokens = torch.from_numpy(self.tokenizer.encode_batch(list(captions)))
            return self.model.text_tower(tokens).double().numpy()
        index = self.tokenizer.index
        ids = [[index.get(w, 1) for w in split_words(c)] for c in captions]
        if kind == "bow":  # term counts over the most frequent words (ids follow frequency), L2-normalised
            out = np.zeros((len(captions), self.n_bow))
            for i, row in enumerate(ids):
                cols = [j - FIRST_WORD for j in row if FIRST_WORD <= j < FIRST_WORD + self.n_bow]
                np.add.at(out[i], cols, 1.0)
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        wv = self.word_vectors  # mean of the vectors of the caption's known words
        out = np.zeros((len(captions), wv.shape[1]))
        for i, row in enumerate(ids):
            known = [j for j in row if j >= FIRST_WORD]
            if known:
                out[i] = wv[known].mean(0)
        return out

    # -- mapped features (what the statistics are accumulated over)
    def image(self, pixels: np.ndarray) -> np.ndarray:
        x = self.image_raw(pixels)
        return self.kernel_x(x) if self.kernel_x is not None else x

    def text(self, captions: list[str]) -> np.ndarray:
        y = self.text_raw(captions)
        return self.kernel_y(y) if self.kernel_y is not None else y

    def pairs(self, pixels: np.ndarray, caption_lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Every (image, caption) pair of a batch: -> x (m, dx), y (m, dy), the image repeated per caption."""
        x = self.image(pixels)
        counts = [len(c) for c in caption_lists]
        y = self.text([c for cs in caption_lists for c in cs])
        return np.repeat(x, counts, axis=0), y

    def fit_kernel_maps(self, pixels: np.ndarray, captions: list[str]) -> None:
        """Kernel CCA: fit each view's map (bandwidth, landmarks) on a sample of raw features."""
        c = self.cfg
        self.kernel_x = build_kernel_map(c.kernel_map, self.image_raw(pixels), c.kernel_dim, c.bandwidth,
                                         c.seed)
        self.kernel_y = build_kernel_map(c.kernel_map, self.text_raw(captions), c.kernel_dim, c.bandwidth,
                                         c.seed + 1)


class BaselineEncoder:
    """A fitted baseline with the encoder interface: PIL images / strings in, L2-normalised (N, embed_dim)
    float32 out. Subclasses map each view's features (`features.image`, `features.text`) into the shared space."""

    features: Featurizer
    image_size: int
    embed_dim: int

    def map_image(self, x: np.ndarray) -> torch.Tensor:  # (N, dx) features -> (N, embed_dim) unit vectors
        raise NotImplementedError

    def map_text(self, y: np.ndarray) -> torch.Tensor:  # (N, dy) features -> (N, embed_dim) unit vectors
        raise NotImplementedError

    def encode_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """(N, 3, S, S) uint8 -> (N, embed_dim)."""
        if len(pixels) == 0:
            return torch.zeros(0, self.embed_dim)
        return self.map_image(self.features.image(pixels))

    def encode_image(self, images: list) -> torch.Tensor:
        return self.encode_pixels(pil_pixels(images, self.image_size))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if len(texts) == 0:
            return torch.zeros(0, self.embed_dim)
        return self.map_text(self.features.text(list(texts)))


class CCAEncoder(BaselineEncoder):
    """Linear (or kernel) CCA as an encoder: canonical direction i weighted by correlation_i ** power before
    normalising."""

    def __init__(self, features: Featurizer, cca: LinearCCA, power: float, image_size: int):
        self.features, self.cca, self.image_size = features, cca, image_size
        self.weights = np.maximum(cca.correlations, 0.0) ** power  # (k,)

    @property
    def embed_dim(self) -> int:
        return len(self.weights)

    def _unit(self, z: np.ndarray) -> torch.Tensor:
        z = z * self.weights
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return torch.from_numpy(z.astype(np.float32))

    def map_image(self, x: np.ndarray) -> torch.Tensor:
        return self._unit(self.cca.transform_x(x))

    def map_text(self, y: np.ndarray) -> torch.Tensor:
        return self._unit(self.cca.transform_y(y))

    def saved(self) -> tuple[str, dict]:
        """The file the `cca` job writes beside its report, and its arrays."""
        return "cca.npz", self.cca.to_arrays()
