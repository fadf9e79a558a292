"""Contrastive losses over embeddings: pure PyTorch, no Ray, no rank or world-size objects.

Every loss is called as `loss(image_emb, text_emb)` on one batch. In a distributed run the train step also
passes the all-gathered global batch and this worker's row offset into it:

    loss(img_local, txt_local, image_all=img_global, text_all=txt_global, offset=rank * b)

Each row-wise loss scores only this worker's rows against the global columns (O(b*B) memory) and returns the
mean over its rows, so the mean over workers is the global loss. With gradients flowing back through the
all-gather (each worker's inputs receive every worker's share) and DDP averaging parameter gradients, the
applied update equals single-process autograd on the concatenated global batch. `dcca` is not row-wise: it
computes the global objective from the gathered matrices on every worker, which is exact by the same argument.

Distances: cosine similarity s_ij = <x_i, y_j> on unit vectors; the Euclidean losses use
d_ij^2 = ||x_i - y_j||^2 = 2 - 2 s_ij.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.registry import (check_dcca, check_label_smoothing, check_margin, check_mining,
                                      check_temperature)

MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: beyond it the softmax saturates and training turns unstable


def _globals(image_emb, text_emb, image_all, text_all):
    if (image_all is None) != (text_all is None):
        raise ValueError("pass both image_all and text_all, or neither")
    return (image_emb, text_emb) if image_all is None else (image_all, text_all)


def _labels(x: torch.Tensor, offset: int) -> torch.Tensor:
    return torch.arange(x.shape[0], device=x.device) + offset  # (b,) global column of each local row


def _positive_mask(x: torch.Tensor, n_cols: int, offset: int) -> torch.Tensor:
    """(b, B) bool: True at each local row's own pair."""
    return F.one_hot(_labels(x, offset), n_cols).bool()




class _LearnedScale(nn.Module):
    """A logit scale s = exp(logit_scale), capped at MAX_LOGIT_SCALE. The cap is applied to the parameter
    after each optimiser step (`clamp_parameters_`, as OpenCLIP does), not inside forward: a clamp in
    forward has zero gradient above the cap, so a parameter that once passed it could never come back."""

    def _init_scale(self, temperature: float, learn: bool) -> None:
        start = min(math.log(1.0 / check_temperature(temperature)), math.log(MAX_LOGIT_SCALE))
        self.logit_scale = nn.Parameter(torch.tensor(start), requires_grad=learn)

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp()

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        self.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))


class InfoNCE(_LearnedScale):
    """Symmetric CLIP loss / NT-Xent with logit scale s = 1/tau (exp of a parameter, capped at 100):

        L = 1/2 mean_i [ -log softmax_j(s <x_i, y_j>)_i  -  log softmax_j(s <y_i, x_j>)_i ]

    optionally with label smoothing. Use it by default: it is the strongest of these in the literature.
    """

    def __init__(self, temperature: float = 0.07, learn_temperature: bool = True, label_smoothing: float = 0.0):
        super().__init__()
        check_label_smoothing(label_smoothing)
        self._init_scale(temperature, learn_temperature)
        self.label_smoothing = label_smoothing

    def forward(self, image_emb, text_emb, image_all=None, text_all=None, offset: int = 0):
        image_all, text_all = _globals(image_emb, text_emb, image_all, text_all)
        s, labels, ls = self.scale(), _labels(image_emb, offset), self.label_smoothing
        logits_i2t = s * image_emb @ text_all.T  # (b, B)
        logits_t2i = s * text_emb @ image_all.T  # (b, B)
        return 0.5 * (F.cross_entropy(logits_i2t, labels, label_smoothing=ls)
                      + F.cross_entropy(logits_t2i, labels, label_smoothing=ls))


class SigLIP(_LearnedScale):
    """Sigmoid / NT-Logistic loss over every (image, text) pair, z_ij = +1 on the diagonal, -1 elsewhere:

        L = -1/B sum_i sum_j log sigmoid(z_ij (t <x_i, y_j> + b))

    t = exp(t') with t' = log(1/temperature) (SigLIP: temperature 0.1, t = 10), bias b initialised at -10.
    A worker's rows are its images against all texts, so each pair is counted exactly once across workers.
    Use it when the global batch is large or uneven: it needs no softmax normalisation over the batch.
    """

    def __init__(self, temperature: float = 0.1, learn_temperature: bool = True, bias_init: float = -10.0):
        super().__init__()
        self._init_scale(temperature, learn_temperature)
        self.logit_bias = nn.Parameter(torch.tensor(float(bias_init)), requires_grad=learn_temperature)

    def forward(self, image_emb, text_emb, image_all=None, text_all=None, offset: int = 0):
        _, text_all = _globals(image_emb, text_emb, image_all, text_all)
        logits = self.scale() * image_emb @ text_all.T + self.logit_bias  # (b, B)
        z = 2.0 * _positive_mask(image_emb, text_all.shape[0], offset).to(logits.dtype) - 1.0
        return -F.logsigmoid(z * logits).sum(1).mean()


class _Hinge(nn.Module):
    """Shared by vse and vse++: hinge [m - s_ii + s_ij]_+ for image anchors (row i of S) and for text anchors
    (row i of S^T), the positive excluded."""

    reduce = "sum"

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = check_margin(margin)

    def _direction(self, anchors, others, offset):
        sims = anchors @ others.T  # (b, B)
        pos = _positive_mask(anchors, others.shape[0], offset)
        own = sims[pos].unsqueeze(1)  # (b, 1)
        cost = (self.margin - own + sims).clamp(min=0).masked_fill(pos, 0.0)  # (b, B)
        return cost.sum(1) if self.reduce == "sum" else cost.max(1).values

    def forward(self, image_emb, text_emb, image_all=None, text_all=None, offset: int = 0):
        image_all, text_all = _globals(image_emb, text_emb, image_all, text_all)
        return (self._direction(image_emb, text_all, offset) + self._direction(text_emb, image_all, offset)).mean()


class VSE(_Hinge):
    """VSE sum of hinges (Kiros et al.), both directions, mean over anchors:

        L = mean_i [ sum_{j!=i} [m - s_ii + s_ij]_+  +  sum_{j!=i} [m - s_ii + s_ji]_+ ]

    Every violating negative contributes; a classic, robust baseline that plateaus below the softmax losses.
    """

    reduce = "sum"


class VSEPlusPlus(_Hinge):
    """VSE++ max-violation (Faghri et al.): only the hardest in-batch negative of each anchor counts:

        L = mean_i [ max_{j!=i} [m - s_ii + s_ij]_+  +  max_{j!=i} [m - s_ii + s_ji]_+ ]

    Sharper than the sum of hinges once the model is past its first epoch; can stall when started cold.
    """

    reduce = "max"


class PairwiseContrastive(nn.Module):
    """Pairwise contrastive loss (Chopra, Hadsell, LeCun 2005) on Euclidean distance d_ij = ||x_i - y_j||:
    matching pairs pulled together, non-matching ones pushed beyond the margin m:

        L = mean_i [ 1/2 d_ii^2  +  1/(2(B-1)) sum_{j!=i} max(0, m - d_ij)^2 ]

    Each (image, text) pair is one image row, so a pair is counted once. Pick m in (0, 2]: unit vectors are
    at most 2 apart. Simple, but weaker than the ranking losses because it pushes all pairs equally.
    """

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = check_margin(margin, hi=2.0)

    def forward(self, image_emb, text_emb, image_all=None, text_all=None, offset: int = 0):
        _, text_all = _globals(image_emb, text_emb, image_all, text_all)
        n = text_all.shape[0]
        d2 = (2.0 - 2.0 * image_emb @ text_all.T).clamp(min=0)  # (b, B) squared distances
        pos = _positive_mask(image_emb, n, offset)
        d = d2.masked_fill(pos, 1.0).sqrt()  # the positives use d2 directly: no sqrt'(0) blow-up there
        neg = (self.margin - d).clamp(min=0).pow(2).masked_fill(pos, 0.0).sum(1) / max(n - 1, 1)
        return (0.5 * d2[pos] + 0.5 * neg).mean()


class Triplet(nn.Module):
    """FaceNet triplet loss on squared distances, image anchors and text anchors, in-batch negatives:

        L = mean_anchors [ d^2(a, p) - d^2(a, n) + m ]_+

    `mining`: `hardest` (the closest negative), `semi-hard` (FaceNet: the closest negative farther than the
    positive; when there is none, the farthest negative, as TensorFlow Addons does) or `all` (the mean hinge
    over every negative). Use `semi-hard` to avoid the collapse hardest-negative mining can cause early on.
    """

    def __init__(self, margin: float = 0.2, mining: str = "semi-hard"):
        super().__init__()
        self.margin, self.mining = check_margin(margin), check_mining(mining)

    def _direction(self, anchors, others, offset):
        d2 = 2.0 - 2.0 * anchors @ others.T  # (b, B) squared distances
        pos = _positive_mask(anchors, others.shape[0], offset)
        d_ap = d2[pos].unsqueeze(1)  # (b, 1)
        if self.mining == "all":
            return (d_ap - d2 + self.margin).clamp(min=0).masked_fill(pos, 0.0).sum(1) / max(d2.shape[1] - 1, 1)
        if self.mining == "hardest":
            d_an = d2.masked_fill(pos, float("inf")).min(1).values
        else:
            farther = (d2 > d_ap) & ~pos
            semi = d2.masked_fill(~farther, float("inf")).min(1).values
            easiest = d2.masked_fill(pos, float("-inf")).max(1).values
            d_an = torch.where(farther.any(1), semi, easiest)
        return (d_ap.squeeze(1) - d_an + self.margin).clamp(min=0)

    def forward(self, image_emb, text_emb, image_all=None, text_all=None, offset: int = 0):
        image_all, text_all = _globals(image_emb, text_emb, image_all, text_all)
        return 0.5 * (self._direction(image_emb, text_all, offset)
                      + self._direction(text_emb, image_all, offset)).mean()


class NPair(nn.Module):
    """Multi-class N-pair loss (Sohn 2016): softmax over the in-batch negatives, no temperature, both ways:

        L = 1/2 mean_i [ log(1 + sum_{j!=i} exp(s_ij - s_ii)) + log(1 + sum_{j!=i} exp(s_ji - s_ii)) ]

    On unit vectors this is InfoNCE with the scale fixed at 1: the logits span only [-1, 1], so it learns
    slowly. It is here as the historical step between triplets and NT-Xent, and to show what temperature buys.
    """

    def forward(self, image_emb, text_emb, image_all=None, text_all=None, offset: int = 0):
        image_all, text_all = _globals(image_emb, text_emb, image_all, text_all)
        labels = _labels(image_emb, offset)
        return 0.5 * (F.cross_entropy(image_emb @ text_all.T, labels) + F.cross_entropy(text_emb @ image_all.T, labels))


class LiftedStructured(nn.Module):
    """Lifted structured loss (Song et al. 2016) across the two modalities, on Euclidean distances d_ij:

        J_i = log( sum_{k!=i} exp(m - d_ik) + sum_{l!=i} exp(m - d_li) ) + d_ii
        L = mean_i 1/2 [J_i]_+^2

    Each positive pair (image i, caption i) is lifted against every in-batch negative of both its members: the
    captions k != i of image i and the images l != i of caption i, combined in one smooth (log-sum-exp) hard
    negative instead of a triplet's single one. Pick the margin m in (0, 2]: unit vectors are at most 2 apart.
    """

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = check_margin(margin, hi=2.0)

    def forward(self, image_emb, text_emb, image_all=None, text_all=None, offset: int = 0):
        image_all, text_all = _globals(image_emb, text_emb, image_all, text_all)
        pos = _positive_mask(image_emb, text_all.shape[0], offset)  # (b, B)
        # d = sqrt(d^2) with d^2 floored: sqrt has an infinite slope at 0, where a perfect positive sits.
        d_it = (2.0 - 2.0 * image_emb @ text_all.T).clamp(min=1e-12).sqrt()  # (b, B): image i to caption k
        d_ti = (2.0 - 2.0 * text_emb @ image_all.T).clamp(min=1e-12).sqrt()  # (b, B): caption i to image l
        negatives = torch.cat([(self.margin - d_it).masked_fill(pos, float("-inf")),
                               (self.margin - d_ti).masked_fill(pos, float("-inf"))], dim=1)  # (b, 2B)
        j = torch.logsumexp(negatives, dim=1) + d_it[pos]  # (b,)
        return 0.5 * j.clamp(min=0).pow(2).mean()


def _inv_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return v @ torch.diag_embed(w.clamp(min=1e-12).rsqrt()) @ v.T


class DCCA(nn.Module):
    """Deep CCA (Andrew et al. 2013): the negative sum of the top-k canonical correlations of the two views
    over the global batch, with ridge terms r1, r2 on the covariances:

        S11 = H1c'H1c/(B-1) + r1 I,  S22 = H2c'H2c/(B-1) + r2 I,  S12 = H1c'H2c/(B-1)
        L = - sum_{top k} singular values of  S11^-1/2 S12 S22^-1/2

    Works on un-normalised projections (`normalized_inputs = False` tells the train step). Needs a global
    batch larger than the embedding dimension. Each worker computes it from the gathered batch.
    """

    normalized_inputs = False
    MOMENTUM = 0.1  # of the running statistics behind the retrieval projections

    def __init__(self, top_k: int = 0, r1: float = 1e-3, r2: float = 1e-3):
        super().__init__()
        check_dcca(top_k, r1, r2)
        self.top_k, self.r1, self.r2 = int(top_k), float(r1), float(r2)
        for name in ("mean1", "mean2", "s11", "s22", "s12"):
            self.register_buffer(name, torch.zeros(0))  # sized on the first batch

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("mean1", "mean2", "s11", "s22", "s12"):  # adopt the saved statistics' shapes
            if prefix + name in state_dict:
                setattr(self, name, torch.zeros_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _track(self, m1, m2, s11, s22, s12) -> None:
        if self.training:
            for name, value in (("mean1", m1), ("mean2", m2), ("s11", s11), ("s22", s22), ("s12", s12)):
                old = getattr(self, name)
                if old.shape != value.shape:  # first batch: adopt it
                    setattr(self, name, value.detach().clone())
                else:
                    old.mul_(1 - self.MOMENTUM).add_(value.detach(), alpha=self.MOMENTUM)

    @torch.no_grad()
    def retrieval_maps(self):
        """Linear CCA on the running statistics: centers and maps W1 = S11^-1/2 U, W2 = S22^-1/2 V (top-k
        columns kept, the rest zeroed), so that cosine retrieval compares canonical variates. None before
        the first batch."""
        if self.s11.numel() == 0:
            return None
        a, b = _inv_sqrt(self.s11), _inv_sqrt(self.s22)
        u, _, vh = torch.linalg.svd(a @ self.s12 @ b)
        k = self.top_k or u.shape[1]
        keep = (torch.arange(u.shape[1], device=u.device) < k).to(u.dtype)
        return self.mean1, (a @ u) * keep, self.mean2, (b @ vh.T) * keep

    def forward(self, image_emb, text_emb, image_all=None, text_all=None, offset: int = 0):
        h1, h2 = _globals(image_emb, text_emb, image_all, text_all)
        n, d = h1.shape
        if n <= d:
            raise ValueError(f"dcca needs a global batch larger than the embedding dimension ({n} <= {d})")
        h1c, h2c = h1 - h1.mean(0), h2 - h2.mean(0)
        eye = torch.eye(d, dtype=h1.dtype, device=h1.device)
        s11 = h1c.T @ h1c / (n - 1) + self.r1 * eye
        s22 = h2c.T @ h2c / (n - 1) + self.r2 * eye
        s12 = h1c.T @ h2c / (n - 1)
        self._track(h1.mean(0), h2.mean(0), s11, s22, s12)
        corr = torch.linalg.svdvals(_inv_sqrt(s11) @ s12 @ _inv_sqrt(s22))  # descending
        return -corr[: self.top_k or d].sum()


# A scoring head's losses (rerank.enabled trains one with the towers; `pipeline rerank` on mined negatives).


def listwise_loss(scorer, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """`scorer` (a module scoring (n, da) image rows against (n, db) caption rows, e.g. the re-ranker's fusion head)
    trained by cross-entropy of each query's true pair against its mined hard negatives: `images` (n, 1 + m, da) with the
    true image first for caption queries (or the reverse roles), `captions` likewise. -> the mean over queries."""
    n, c = images.shape[:2]
    scores = scorer(images.reshape(n * c, -1), captions.reshape(n * c, -1)).view(n, c)
    return F.cross_entropy(scores, torch.zeros(n, dtype=torch.long, device=scores.device))


def in_batch_loss(scorer, img: torch.Tensor, txt: torch.Tensor, img_all: torch.Tensor,
                  txt_all: torch.Tensor, offset: int, m: int) -> torch.Tensor:
    """The head trained with the towers (rerank.enabled): each local caption's true image against the `m`
    images of the global batch the towers rank highest for it, and each local image's caption against its `m`
    hardest captions, a listwise cross-entropy in both directions. `img`, `txt` (b, D) are this worker's pairs,
    `img_all`, `txt_all` (B, D) the all-gathered batch with this worker's rows at `offset`. The negatives are
    picked without a graph; the loss flows into every embedding it scores, other workers' rows included (their
    share of the gradient goes back through the all-gather). -> scalar"""
    b = img.shape[0]
    own = torch.arange(b, device=img.device) + offset  # (b,) each local pair's row in the global batch
    m = min(m, img_all.shape[0] - 1)
    with torch.no_grad():
        def hardest(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # (b, D), (B, D) -> (b, 1 + m), true first
            sims = q @ g.T  # (b, B)
            sims[torch.arange(b, device=q.device), own] = float("-inf")
            return torch.cat([own[:, None], sims.topk(m, dim=1).indices], dim=1)
        for_captions, for_images = hardest(txt, img_all), hardest(img, txt_all)
    images = img_all[for_captions]  # (b, 1 + m, D)
    by_caption = listwise_loss(scorer, images, txt.unsqueeze(1).expand_as(images))
    captions = txt_all[for_images]  # (b, 1 + m, D)
    by_image = listwise_loss(scorer, img.unsqueeze(1).expand_as(captions), captions)
    return 0.5 * (by_caption + by_image)


LOSSES: dict[str, type[nn.Module]] = {
    "infonce": InfoNCE, "siglip": SigLIP, "vse": VSE, "vse++": VSEPlusPlus, "contrastive": PairwiseContrastive,
    "triplet": Triplet, "npair": NPair, "lifted": LiftedStructured, "dcca": DCCA,
}


def loss_params(name: str) -> list[str]:
    """The keyword parameters loss `name` takes."""
    params = inspect.signature(LOSSES[name].__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def build_loss(name, **params) -> nn.Module:
    """`build_loss('infonce', temperature=0.05)`, or `build_loss(cfg.loss)` with a LossConfig section.

    From a config section, the fields the chosen loss takes and that are set (not None) are passed; the rest
    keep the loss's own defaults. A parameter the loss does not take is an error naming the ones it does.
    """
    if not isinstance(name, str):  # a LossConfig-like section
        section = name
        name = section.name
        params = {k: getattr(section, k) for k in loss_params(name) if getattr(section, k, None) is not None} | params
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    accepted = loss_params(name)
    extra = sorted(set(params) - set(accepted))
    if extra:
        raise ValueError(f"loss {name!r} takes no parameter {extra[0]!r}; it takes {accepted}")
    return LOSSES[name](**params)
