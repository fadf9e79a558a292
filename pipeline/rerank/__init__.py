"""The fusion re-ranker ("similarity network"): a head that scores (image, caption) pairs and re-orders an
index's top-K.

- fusion.py  the six fusions, the scorer, re-ranking a candidate list, the listwise loss, R@K before/after (pure)
- mining.py  hard negatives from a trained two-tower model's own top-K over the training set (pure)
- job.py     `pipeline rerank`: embed the training set, mine, train on Ray Train workers, save; load it back
"""
