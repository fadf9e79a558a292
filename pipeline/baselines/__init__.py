"""Baselines fitted on the training data and scored by the same evaluation and report as a trained run.

- cca.py          linear CCA over mergeable sufficient statistics; kernel maps for kernel CCA (NumPy, pure)
- autoencoder.py  Ngiam et al.'s bimodal autoencoder, modality dropout, its encoder (PyTorch, pure)
- features.py     each view's features (pixels, bag of words, word vectors, frozen towers) and the CCA encoder
- fitting.py      `pipeline baseline` (or `cca`): passes over the shards with Ray Data, the fit, the report
"""
