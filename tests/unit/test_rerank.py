"""The fusion re-ranker's pieces without Ray: the compact bilinear pooling is the count sketch of the outer
product (so its inner products estimate the outer products', better as the sketch grows), a full bilinear
fusion with a rank-1 weight is the low-rank form, and re-ranking permutes each query's candidates."""
import torch

from pipeline.losses import in_batch_loss, listwise_loss
from pipeline.rerank.fusion import FUSIONS, CountSketch, FusionScorer, compact_bilinear, rerank, rerank_recalls


def _unit(n, d, seed):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed),
                                                     dtype=torch.float64), dim=1)


def test_compact_bilinear_is_the_count_sketch_of_the_outer_product():
    sa, sb = CountSketch(6, 11, seed=0), CountSketch(5, 11, seed=1)
    a, b = _unit(3, 6, 2), _unit(3, 5, 3)
    got = compact_bilinear(sa, sb, a, b)
    want = torch.zeros(3, 11, dtype=torch.float64)
    for n in range(3):
        for i in range(6):
            for j in range(5):
                bucket = (int(sa.bucket[i]) + int(sb.bucket[j])) % 11
                want[n, bucket] += float(sa.sign[i] * sb.sign[j]) * float(a[n, i] * b[n, j])
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_sketched_inner_products_approximate_the_outer_products_and_improve_with_size():
    a, a2, b, b2 = _unit(200, 32, 0), _unit(200, 32, 1), _unit(200, 24, 2), _unit(200, 24, 3)
    truth = (a * a2).sum(1) * (b * b2).sum(1)  # <a b^T, a' b'^T> = <a, a'> <b, b'>
    errors = {}
    for d in (64, 4096):
        est = []
        for seed in range(8):  # fresh hashes: the estimate is unbiased over them
            sa, sb = CountSketch(32, d, seed), CountSketch(24, d, seed + 100)
            est.append((compact_bilinear(sa, sb, a, b) * compact_bilinear(sa, sb, a2, b2)).sum(1))
        est = torch.stack(est)  # (8, 200)
        errors[d] = float((est - truth).abs().mean())
        assert float((est.mean(0) - truth).abs().mean()) < errors[d]  # averaging over hashes helps: unbiased
    assert errors[4096] < errors[64] / 4, errors  # the error falls as the sketch grows (variance ~ 1/d)


def test_bilinear_with_a_rank_one_weight_equals_the_low_rank_form():
    torch.manual_seed(0)
    low = FusionScorer("low_rank", 6, 5, dim=4, hidden=8, rank=1).double()
    full = FusionScorer("bilinear", 6, 5, dim=4, hidden=8).double()
    u, v = low.u.weight[0], low.v.weight[0]  # (6,), (5,)
    with torch.no_grad():
        full.bilinear.weight.copy_(low.r.weight[:, 0, None, None] * torch.outer(u, v))  # W_k = R_k1 u v^T
        full.bilinear.bias.copy_(low.r.bias)
        full.head.load_state_dict(low.head.state_dict())
    a, b = _unit(7, 6, 1), _unit(7, 5, 2)
    torch.testing.assert_close(full.fuse(a, b), low.fuse(a, b))
    torch.testing.assert_close(full(a, b), low(a, b))


def test_every_fusion_scores_pairs_and_learns_from_the_listwise_loss():
    a, b = _unit(4, 6, 0).float(), _unit(4, 5, 1).float()
    for fusion in FUSIONS:
        scorer = FusionScorer(fusion, 6, 5, dim=8, hidden=8, rank=3, sketch_dim=16)
        assert scorer(a, b).shape == (4,), fusion
        images = torch.stack([a, a.roll(1, 0), a.roll(2, 0)], dim=1)  # (4, 3, 6): the true image first
        captions = b.unsqueeze(1).expand(4, 3, 5)
        loss = listwise_loss(scorer, images, captions)
        loss.backward()
        assert loss.item() > 0 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer.parameters())


def test_rerank_permutes_each_querys_candidates_by_score():
    torch.manual_seed(0)
    scorer = FusionScorer("product", 6, 5, dim=8, hidden=8)
    queries, gallery = _unit(3, 5, 0).float(), _unit(20, 6, 1).float()  # caption queries, image gallery
    candidates = torch.tensor([[3, 7, 1, 9], [0, 19, 5, 2], [11, 12, 13, 14]])
    out = rerank(scorer, queries, gallery, candidates, query_is_image=False)
    for row, cand in zip(out, candidates):
        assert sorted(row.tolist()) == sorted(cand.tolist())
    with torch.no_grad():
        scores = scorer(gallery[out[0]], queries[0].expand(4, 5))
    assert torch.all(scores[:-1] >= scores[1:])  # best first


def test_recalls_before_match_the_metrics_and_a_perfect_scorer_puts_every_pair_first():
    from pipeline.metrics import i2t_ranks, metrics_from_ranks, t2i_ranks

    img, txt = _unit(12, 6, 0).float(), _unit(24, 6, 1).float()
    t2i = torch.arange(24) // 2  # two captions per image
    txt = torch.nn.functional.normalize(txt + 0.8 * img[t2i], dim=1)  # captions near their images, not always first

    class Oracle(FusionScorer):  # knows the pairs: 1 for a true (image, caption) pair, else 0
        def forward(self, a, b):
            return (((a.unsqueeze(1) - img.unsqueeze(0)).abs().sum(2).argmin(1))
                    == t2i[(b.unsqueeze(1) - txt.unsqueeze(0)).abs().sum(2).argmin(1)]).float()

    out = rerank_recalls(Oracle("concat", 6, 6), img, txt, t2i, k=12, ks=(1, 5))
    want = metrics_from_ranks(i2t_ranks(img, txt, t2i, 8), t2i_ranks(img, txt, t2i, 8), (1, 5))
    for d in ("i2t", "t2i"):
        assert out[d]["before"]["R@1"] == round(want[d]["R@1"], 2) and out[d]["before"]["R@5"] == round(want[d]["R@5"], 2)
        assert out[d]["after"]["R@1"] == 100.0  # every relevant item was within the top 12 of 12
    assert out["k"] == 12 and out["ms_per_query"] > 0


def test_rerank_config_mistakes_are_one_line_errors():
    import pytest

    from pipeline.config import ConfigError, EvalJobConfig, load_config

    for over, match in ((["rerank.sketch_dim=0"], "rerank.sketch_dim=0 must be a positive integer"),
                        (["rerank.sketch_dim=2.5"], "rerank.sketch_dim"),
                        (["rerank.rank=0"], "rerank.rank=0: a low_rank fusion needs rank >= 1"),
                        (["rerank.fusion=outer"], "rerank.fusion='outer'; choose one of")):
        with pytest.raises(ConfigError, match=match):
            load_config(EvalJobConfig, None, over)
    assert load_config(EvalJobConfig, None, ["rerank.fusion=compact_bilinear", "rerank.sketch_dim=512"])


def test_in_batch_head_loss_equals_a_loop_over_each_querys_hardest_negatives():
    """rerank.enabled's loss on one worker's rows of a global batch: for every local caption, its image against
    the m images the towers rank highest for it (its own left out), and the reverse; checked against a loop that
    scores each candidate list on its own. Gradients reach every embedding it scored, other workers' too."""
    torch.manual_seed(0)
    scorer = FusionScorer("low_rank", 6, 6, dim=5, hidden=7, rank=3).double()
    img_all = _unit(10, 6, 4).requires_grad_(True)
    txt_all = _unit(10, 6, 5).requires_grad_(True)
    offset, b, m = 4, 3, 4  # this worker holds rows 4..6 of a batch of 10
    img, txt = img_all[offset:offset + b], txt_all[offset:offset + b]
    got = in_batch_loss(scorer, img, txt, img_all, txt_all, offset, m)
    terms = []
    for i in range(b):
        own = offset + i
        for q, pool, query_is_image in ((txt[i], img_all, False), (img[i], txt_all, True)):
            sims = [(float((q @ pool[j]).detach()), j) for j in range(10) if j != own]
            cands = [own] + [j for _, j in sorted(sims, reverse=True)[:m]]
            qs = q.unsqueeze(0).expand(len(cands), -1)
            scores = scorer(qs, pool[cands]) if query_is_image else scorer(pool[cands], qs)
            terms.append(-torch.log_softmax(scores, 0)[0] / (2 * b))
    want = torch.stack(terms).sum()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got.backward()
    outside = [j for j in range(10) if not offset <= j < offset + b]
    assert img_all.grad[outside].abs().sum() > 0 and txt_all.grad[outside].abs().sum() > 0
    assert (txt_all.grad.abs().sum(1) > 0).sum() > b  # other rows were scored as hard negatives


def test_a_checkpoint_trained_with_its_head_is_its_own_reranker(tmp_path):
    """rerank.enabled: the checkpoint (or its run directory) stands for the re-ranker, with the head's weights as
    trained; a checkpoint without a head, or another checkpoint's towers, is refused naming what to give."""
    import pytest

    from pipeline import checkpoint
    from pipeline.config import TrainJobConfig, load_config, to_dict
    from pipeline.data.text.tokenizer import Tokenizer
    from pipeline.models import build_model
    from pipeline.rerank.job import load

    def write(path, seed, head):
        cfg = load_config(TrainJobConfig, None, ["data.train=a", "data.val=b", "model.embed_dim=8",
                                                 "model.image.width=4", "model.text.word_dim=8", "model.text.hidden=8",
                                                 "rerank.enabled=true", "rerank.fusion=low_rank", "rerank.dim=6"])
        tok = Tokenizer(["[PAD]", "[UNK]", "red", "square"], 8)
        torch.manual_seed(seed)
        model = build_model(cfg.model, len(tok), image_size=32, max_tokens=8)
        h = FusionScorer.from_config(cfg.rerank, model.embed_dim) if head else None
        checkpoint.write_checkpoint(path, model=model, loss=torch.nn.Linear(1, 1), optimizer=None, scheduler=None,
                                    tokenizer=tok, config=to_dict(cfg), state={"epoch": 1, "head_dim": 8}, head=h)
        return h

    head = write(tmp_path / "run" / "checkpoints" / "epoch_0001", 0, True)
    scorer, meta = load(str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints" / "epoch_0001"))
    a, b = _unit(4, 8, 0).float(), _unit(4, 8, 1).float()
    torch.testing.assert_close(scorer(a, b), head.eval()(a, b))
    assert meta["description"] == "low_rank fusion, rank 64, 256 hidden, trained with the towers"
    write(tmp_path / "plain", 0, False)
    with pytest.raises(ValueError, match="holds no re-ranker"):
        load(str(tmp_path / "plain"), str(tmp_path / "plain"))
    write(tmp_path / "other", 1, False)
    with pytest.raises(ValueError, match=r"trained on the two-tower checkpoint .*epoch_0001, not on .*other"):
        load(str(tmp_path / "run"), str(tmp_path / "other"))
