"""Captions to token ids: the word and character tokenizers, byte-pair and pretrained (OpenCLIP, Hugging Face)
tokenizers, and the vocabulary a run builds from a seeded caption sample.

- tokenizer.py   `Tokenizer`: words and characters, to_dict / from_dict for checkpoints
- subword.py     BPE learnt from the captions; OpenCLIP's and Hugging Face's tokenizers from local files
- vocabulary.py  which tokenizer a config asks for, built from the caption pass's word counts
"""
