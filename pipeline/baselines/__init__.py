"""Baselines fitted on the training data and scored by the same evaluation and report as a trained run.

- cca.py       linear CCA over mergeable sufficient statistics; kernel maps for kernel CCA (NumPy, pure)
- features.py  each view's features (pixels, bag of words, word vectors, frozen towers) and the CCA encoder
- fitting.py   `pipeline cca`: statistics accumulated over shards with Ray Data, the fit, the scored report
"""
