"""Word vectors learnt from the captions themselves (`pipeline embeddings`), for the word towers to start from.

- cooccurrence.py  windowed co-occurrence counts, PPMI and the truncated SVD, GloVe's text format (pure)
- glove_sgns.py    GloVe and skip-gram with negative sampling, trained on those counts (pure PyTorch)
- job.py           the command: a Ray Data counting pass over the shards, then PPMI here or GloVe/SGNS on Ray
                   Train workers, written as a GloVe text file
"""
