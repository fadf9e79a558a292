import pytest
import numpy as np
import torch

from pipeline.metrics import i2t_ranks, retrieval_metrics, summarize_ranks, t2i_ranks


def naive_ranks(img, txt, owner):
    """Slow and obvious: sort every row, find the first ground truth."""
    n, m = img.shape[0], txt.shape[0]
    sims = img @ txt.T
    i2t = []
    for i in range(n):
        order = sorted(range(m), key=lambda j: -float(sims[i, j]))
        i2t.append(1 + min(order.index(j) for j in range(m) if owner[j] == i))
    t2i = []
    for j in range(m):
        order = sorted(range(n), key=lambda i: -float(sims[i, j]))
        t2i.append(1 + order.index(int(owner[j])))
    return np.array(i2t), np.array(t2i)


def test_chunked_ranks_match_naive_loop():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(37, 8, generator=g), dim=1)
    owner = torch.randint(0, 37, (90,), generator=g)
    owner[:37] = torch.arange(37)  # every image has at least one caption
    txt = torch.nn.functional.normalize(img[owner] + 0.8 * torch.randn(90, 8, generator=g), dim=1)
    ref_i2t, ref_t2i = naive_ranks(img, txt, owner)
    for chunk in (1, 7, 1000):
        assert i2t_ranks(img, txt, owner, chunk).tolist() == ref_i2t.tolist()
        assert t2i_ranks(img, txt, owner, chunk).tolist() == ref_t2i.tolist()


def test_hand_worked_case():
    # 2 images, 3 captions: caption 0,1 of image 0; caption 2 of image 1.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    owner = torch.tensor([0, 0, 1])
    # image 0 scores captions (0, .6, 1): best own caption (.6) is 2nd -> rank 2
    # image 1 scores captions (1, .8, 0): its caption (0) is 3rd -> rank 3
    assert i2t_ranks(img, txt, owner).tolist() == [2, 3]
    # caption 0 -> images (0, 1): own image 0 ranks 2; caption 1 -> (.6, .8): 2; caption 2 -> (1, 0): 2
    assert t2i_ranks(img, txt, owner).tolist() == [2, 2, 2]
    m = retrieval_metrics(img, txt, owner)
    assert m["i2t"]["R@1"] == 0.0 and m["i2t"]["R@5"] == 100.0 and m["t2i"]["medr"] == 2
    assert m["rsum"] == 0 + 100 + 100 + 0 + 100 + 100 and m["n_images"] == 2 and m["n_captions"] == 3


def test_summarize_ranks():
    s = summarize_ranks(np.array([1, 2, 6, 11]))
    assert s == {"R@1": 25.0, "R@5": 50.0, "R@10": 75.0, "medr": 4.0, "meanr": 5.0}


def _naive_fold(img, txt, owner, folds):
    """Slow reference: loop over folds and queries with Python lists."""
    size = len(img) // folds
    r1_i2t, r1_t2i = [], []
    for f in range(folds):
        ids = list(range(f * size, (f + 1) * size))
        caps = [j for j in range(len(txt)) if int(owner[j]) in ids]
        hits = 0
        for i in ids:
            scores = sorted(((float(img[i] @ txt[j]), j) for j in caps), reverse=True)
            hits += int(owner[scores[0][1]]) == i
        r1_i2t.append(100.0 * hits / size)
        hits = 0
        for j in caps:
            scores = sorted(((float(txt[j] @ img[i]), i) for i in ids), reverse=True)
            hits += scores[0][1] == int(owner[j])
        r1_t2i.append(100.0 * hits / len(caps))
    return sum(r1_i2t) / folds, sum(r1_t2i) / folds


def test_fold_metrics_match_a_naive_loop():
    from pipeline.metrics import fold_metrics

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    owner = torch.arange(50).repeat_interleave(3)
    txt = torch.nn.functional.normalize(img[owner] + 0.8 * torch.randn(150, 8, generator=g), dim=1)
    out = fold_metrics(img, txt, owner, folds=5, chunk=7)
    i2t, t2i = _naive_fold(img, txt, owner, 5)
    assert abs(out["i2t"]["R@1"] - i2t) < 1e-9 and abs(out["t2i"]["R@1"] - t2i) < 1e-9
    assert out["n_images"] == 10 and out["folds"] == 5


def test_zero_shot_hand_worked():
    from pipeline.metrics import zero_shot_accuracy

    classes = torch.eye(3)  # prompts for classes 0, 1, 2
    images = torch.tensor([[1.0, 0.2, 0.0], [0.9, 0.1, 0.0], [0.0, 0.3, 0.5]])
    labels = torch.tensor([0, 1, 2])  # image 1 is nearest class 0 (wrong), its class 1 is second
    assert zero_shot_accuracy(images, classes, labels, ks=(1, 2)) == pytest.approx({"top1": 200 / 3, "top2": 100.0})


def test_zero_shot_runs_only_for_labelled_galleries():
    from pipeline.gallery import Gallery
    from pipeline.evaluate import zero_shot

    prompts = {"a photo of a cat": [1.0, 0.0], "a photo of a dog": [0.0, 1.0]}
    encode = lambda texts: torch.tensor([prompts[t] for t in texts])  # noqa: E731
    img = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    g = Gallery(img, img, torch.arange(3), ["a", "b", "c"], ["x", "y", "z"], ["cat", "dog", "dog"])
    out = zero_shot(g, encode)
    assert out["classes"] == 2 and out["top1"] == pytest.approx(200 / 3)  # image c looks like a cat
    assert zero_shot(Gallery(img, img, torch.arange(3), ["a", "b", "c"], ["x", "y", "z"]), encode) is None


def _random_gallery(n=30, per=3, noise=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    owner = torch.arange(n).repeat_interleave(per)
    txt = torch.nn.functional.normalize(img[owner] + noise * torch.randn(n * per, 8, generator=g), dim=1)
    return img, txt, owner


def test_recalls_equal_clip_benchmark_without_ties():
    """LAION's clip_benchmark retrieval recall (its own code) gives the same numbers when no scores tie."""
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    img, txt, owner = _random_gallery()
    scores = txt @ img.T  # (M, N)
    positive = torch.nn.functional.one_hot(owner, img.shape[0]).bool()  # (M, N)
    m = retrieval_metrics(img, txt, owner, ks=(1, 5, 10), chunk=7)
    for k in (1, 5, 10):
        t2i = 100 * (recall_at_k(scores, positive, k) > 0).float().mean().item()
        i2t = 100 * (recall_at_k(scores.T, positive.T, k) > 0).float().mean().item()
        assert m["t2i"][f"R@{k}"] == pytest.approx(t2i) and m["i2t"][f"R@{k}"] == pytest.approx(i2t)


def naive_ranks_ties_against(sims_rows, truth_rows):
    """Slow and obvious: for each query, the best true item's score s, and 1 + the others scoring >= s;
    non-finite scores beat everything, a non-finite true score beats nothing."""
    out = []
    for row, truth in zip(sims_rows, truth_rows):
        row = [float(v) if np.isfinite(float(v)) else float("inf") for v in row]
        own = max((v for v, t in zip(row, truth) if t and v != float("inf")), default=float("-inf"))
        out.append(1 + sum(1 for v, t in zip(row, truth) if not t and v >= own))
    return out


@pytest.mark.parametrize("case", ["zeros", "identical", "nan", "one_nan_image", "partial_ties"])
def test_ties_and_non_finite_count_against_the_query(case):
    img, txt, owner = _random_gallery(n=12, per=2)
    if case == "zeros":  # what F.normalize gives a dead tower
        img, txt = torch.zeros_like(img), torch.zeros_like(txt)
    elif case == "identical":
        img, txt = img[:1].expand_as(img).clone(), img[:1].expand_as(txt).clone()
    elif case == "nan":
        img, txt = torch.full_like(img, float("nan")), torch.full_like(txt, float("nan"))
    elif case == "one_nan_image":
        img[3] = float("nan")
    else:  # two images share an embedding: their captions tie between them
        img[5] = img[4]
    sims = (img @ txt.T).numpy()
    truth_i2t = (owner[None, :] == torch.arange(len(img))[:, None]).numpy()
    assert i2t_ranks(img, txt, owner, chunk=5).tolist() == naive_ranks_ties_against(sims, truth_i2t)
    assert t2i_ranks(img, txt, owner, chunk=5).tolist() == naive_ranks_ties_against(sims.T, truth_i2t.T)
    m = retrieval_metrics(img, txt, owner)
    if case in ("zeros", "identical", "nan"):  # a collapsed or diverged model scores as badly as it can
        assert m["i2t"]["R@1"] == 0.0 and m["t2i"]["R@1"] == 0.0 and m["rsum"] == 0.0
        assert m["t2i"]["medr"] == len(img) and m["i2t"]["medr"] == len(txt) - 1
    if case == "one_nan_image":  # its captions find it last; it finds its captions last
        assert (t2i_ranks(img, txt, owner)[owner == 3] == len(img)).all()
        assert i2t_ranks(img, txt, owner)[3] == len(txt) - 1


def test_zero_shot_ties_and_nan_count_against():
    from pipeline.metrics import zero_shot_accuracy

    labels = torch.tensor([0, 1, 2])
    assert zero_shot_accuracy(torch.zeros(3, 3), torch.eye(3), labels, ks=(1,)) == {"top1": 0.0}
    assert zero_shot_accuracy(torch.full((3, 3), float("nan")), torch.eye(3), labels, ks=(1,)) == {"top1": 0.0}
    assert zero_shot_accuracy(torch.eye(3), torch.eye(3), labels, ks=(1,)) == {"top1": 100.0}
