"""Canonical correlation analysis in closed form over mergeable sufficient statistics, and the kernel maps
(random Fourier features, Nyström) that make kernel CCA a linear CCA on mapped features. NumPy, no Ray:
`baselines.fitting` accumulates the statistics over shards with Ray Data.

With ridge terms,  Σ11 = C_xx + r1·s1·I,  Σ22 = C_yy + r2·s2·I  (s = mean variance, so r is scale-free),
T = Σ11^-1/2 Σ12 Σ22^-1/2 = U S Vᵀ,  W1 = Σ11^-1/2 U_k,  W2 = Σ22^-1/2 V_k,  canonical correlations S_k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class CCAStats:
    """n, means and centred (co-)moment sums of paired features x (n, dx), y (n, dy), in float64.

    Batches are merged with Chan et al.'s pairwise update, so sums over shards in any order and grouping
    equal the one-pass statistics, without the cancellation of raw second moments."""

    def __init__(self, dx: int, dy: int):
        self.n = 0
        self.mean_x, self.mean_y = np.zeros(dx), np.zeros(dy)
        self.cxx, self.cyy, self.cxy = np.zeros((dx, dx)), np.zeros((dy, dy)), np.zeros((dx, dy))

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> CCAStats:
        """The statistics of one batch of rows."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows, y {len(y)}: the views must be paired")
        s = cls(x.shape[1], y.shape[1])
        if len(x):
            s.n, s.mean_x, s.mean_y = len(x), x.mean(0), y.mean(0)
            xc, yc = x - s.mean_x, y - s.mean_y
            s.cxx, s.cyy, s.cxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
        return s

    def merge(self, other: CCAStats) -> CCAStats:
        """Fold `other` into these statistics (in place); -> self."""
        if other.n == 0:
            return self
        n = self.n + other.n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        f = self.n * other.n / n
        self.cxx += other.cxx + f * np.outer(dx, dx)
        self.cyy += other.cyy + f * np.outer(dy, dy)
        self.cxy += other.cxy + f * np.outer(dx, dy)
        self.mean_x += dx * other.n / n
        self.mean_y += dy * other.n / n
        self.n = n
        return self

    def covariances(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample covariances (Σxx, Σyy, Σxy), divided by n - 1."""
        if self.n < 2:
            raise ValueError(f"CCA needs at least 2 paired samples, got {self.n}")
        d = self.n - 1
        return self.cxx / d, self.cyy / d, self.cxy / d

    def to_row(self) -> dict[str, np.ndarray]:
        """One row of arrays (leading dimension 1): what a Ray Data `map_batches` call returns."""
        return {"n": np.array([self.n]), "mean_x": self.mean_x[None], "mean_y": self.mean_y[None],
                "cxx": self.cxx[None], "cyy": self.cyy[None], "cxy": self.cxy[None]}

    @classmethod
    def from_rows(cls, batch: dict[str, np.ndarray]) -> CCAStats:
        """Rows written by `to_row` (any number) -> their merged statistics."""
        out = cls(batch["mean_x"].shape[-1], batch["mean_y"].shape[-1])
        for i in range(len(batch["n"])):
            part = cls(0, 0)
            part.n = int(batch["n"][i])
            part.mean_x, part.mean_y, part.cxx, part.cyy, part.cxy = (
                np.array(batch[k][i], np.float64) for k in ("mean_x", "mean_y", "cxx", "cyy", "cxy"))
            out.merge(part)
        return out


def inverse_sqrt(cov: np.ndarray, rcond: float = 1e-10) -> np.ndarray:
    """Symmetric C^-1/2 through the eigendecomposition; directions with eigenvalue below rcond x the largest
    (features that never vary) are dropped (a pseudo-inverse) rather than blown up."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    keep = vals > rcond * max(vals.max(), 0.0)
    inv = np.zeros_like(vals)
    inv[keep] = 1.0 / np.sqrt(vals[keep])
    return (vecs * inv) @ vecs.T


@dataclass
class LinearCCA:
    """A fitted CCA: canonical variables are (x - mean_x) @ w_x and (y - mean_y) @ w_y."""
    mean_x: np.ndarray  # (dx,)
    w_x: np.ndarray  # (dx, k)
    mean_y: np.ndarray  # (dy,)
    w_y: np.ndarray  # (dy, k)
    correlations: np.ndarray  # (k,) descending

    def transform_x(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean_x) @ self.w_x

    def transform_y(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, np.float64) - self.mean_y) @ self.w_y

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean_x": self.mean_x, "w_x": self.w_x, "mean_y": self.mean_y, "w_y": self.w_y,
                "correlations": self.correlations}


def fit_linear_cca(stats: CCAStats, k: int, r1: float = 1e-3, r2: float = 1e-3) -> LinearCCA:
    """Closed-form CCA from the statistics, keeping k <= min(dx, dy) canonical pairs. r1, r2 are ridge terms
    relative to each view's mean variance (0: plain CCA)."""
    sxx, syy, sxy = stats.covariances()
    k = min(k, sxx.shape[0], syy.shape[0])
    if k < 1:
        raise ValueError("CCA needs k >= 1 and non-empty features")
    sxx = sxx + r1 * np.trace(sxx) / len(sxx) * np.eye(len(sxx))
    syy = syy + r2 * np.trace(syy) / len(syy) * np.eye(len(syy))
    ix, iy = inverse_sqrt(sxx), inverse_sqrt(syy)
    u, s, vt = np.linalg.svd(ix @ sxy @ iy)
    return LinearCCA(stats.mean_x.copy(), ix @ u[:, :k], stats.mean_y.copy(), iy @ vt[:k].T, s[:k])


# ------------------------------------------------------------------------------------------ kernel maps


def median_distance(x: np.ndarray, max_rows: int = 2000, seed: int = 0) -> float:
    """The median pairwise Euclidean distance of (a sample of) the rows: the Gaussian kernel's usual width."""
    x = np.asarray(x, np.float64)
    if len(x) > max_rows:
        x = x[np.random.default_rng(seed).choice(len(x), max_rows, replace=False)]
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    d = np.sqrt(d2[np.triu_indices(len(x), 1)])
    d = d[d > 0]
    return float(np.median(d)) if len(d) else 1.0


def gaussian_kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-|a_i - b_j|^2 / (2 sigma^2)) -> (len(a), len(b))."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.exp(-np.maximum(sq, 0.0) / (2 * sigma * sigma))


class RandomFourierFeatures:
    """z(x) = sqrt(2/D) cos(x Ω + b), Ω ~ N(0, 1/σ²), b ~ U[0, 2π): z(a)·z(b) approximates the Gaussian
    kernel of width σ (Rahimi and Recht 2007), with error shrinking as 1/sqrt(D)."""

    def __init__(self, dim_in: int, dim_out: int, sigma: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.omega = rng.normal(0.0, 1.0 / sigma, (dim_in, dim_out))
        self.phase = rng.uniform(0.0, 2 * np.pi, dim_out)
        self.dim_out = dim_out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(2.0 / self.dim_out) * np.cos(np.asarray(x, np.float64) @ self.omega + self.phase)


class Nystroem:
    """z(x) = K(x, L) K_LL^-1/2 over m landmark rows L: z(a)·z(b) is the kernel projected onto the
    landmarks' span (Williams and Seeger 2001); exact on the landmarks themselves."""

    def __init__(self, landmarks: np.ndarray, sigma: float):
        self.landmarks = np.asarray(landmarks, np.float64)
        self.sigma = sigma
        self.whiten = inverse_sqrt(gaussian_kernel(self.landmarks, self.landmarks, sigma), rcond=1e-8)
        self.dim_out = len(self.landmarks)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return gaussian_kernel(np.asarray(x, np.float64), self.landmarks, self.sigma) @ self.whiten


def build_kernel_map(kind: str, sample: np.ndarray, dim_out: int, sigma: float = 0.0, seed: int = 0):
    """'rff' | 'nystrom' feature map for a view, fitted on `sample` rows: σ = sigma, or the sample's median
    pairwise distance when 0; Nyström takes min(dim_out, distinct rows) landmarks from the sample."""
    sample = np.asarray(sample, np.float64)
    sigma = sigma or median_distance(sample, seed=seed)
    if kind == "rff":
        return RandomFourierFeatures(sample.shape[1], dim_out, sigma, seed)
    if kind == "nystrom":
        distinct = np.unique(sample, axis=0)  # repeated rows (a caption said twice) add nothing
        m = min(dim_out, len(distinct))
        pick = np.random.default_rng(seed).choice(len(distinct), m, replace=False)
        return Nystroem(distinct[np.sort(pick)], sigma)
    raise ValueError(f"kernel map {kind!r}; use rff or nystrom")
