"""Sub-word tokenizers with the word tokenizer's interface; each is saved inside the checkpoint's tokenizer.json.

All three give `encode_batch(texts) -> (N, max_tokens) int64`, right-padded with `pad_id`, `len()` = vocabulary
size, and `to_dict()` with a "kind" key that `tokenizer_from_dict` dispatches on:

- BPETokenizer ("bpe"): byte-level BPE trained on the training captions; pad 0, [BOS] ... [EOS].
- HFTokenizer ("hf"): a local Hugging Face tokenizer.json, same ids as `transformers.AutoTokenizer`; optionally the
  text cleaning / [SEP] stripping of open_clip's HFTokenizer (open_clip's BERT and SigLIP text towers).
- OpenCLIPTokenizer ("open_clip"): OpenAI CLIP's BPE as shipped in open_clip_torch; same ids as
  `open_clip.get_tokenizer("ViT-B-32")`.

Masks: use `attention_mask(tokenizer, ids)`, not `ids != 0`: in CLIP's vocabulary id 0 is the real token "!",
which open_clip itself emits for rare punctuation runs (e.g. '!"$'), so only its EOT position bounds the text.
"""
from __future__ import annotations

import hashlib
import html
import json
import string
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.data.text.tokenizer import CharTokenizer, Tokenizer

BPE_SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]  # [PAD] first so that padding is id 0
CLEAN_MODES = (None, "whitespace", "lower", "canonicalize")
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _hf_tokenizer(tokenizer_json: str, max_tokens: int, pad_id: int, pad_token: str):
    from tokenizers import Tokenizer as RustTokenizer

    tok = RustTokenizer.from_str(tokenizer_json)
    # The file's own padding/truncation (MiniLM ships Fixed(128)) must not leak into ours. Truncation counts the
    # post-processor's special tokens, so the closing [SEP]/[EOS] survives, as in transformers.
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token, length=max_tokens)
    return tok


def _encode_with(tok, texts: list[str], max_tokens: int) -> np.ndarray:
    out = np.zeros((len(texts), max_tokens), dtype=np.int64)
    for i, enc in enumerate(tok.encode_batch(list(texts))):
        out[i] = enc.ids
    return out


def clean_text(text: str, mode: str | None) -> str:
    """open_clip's caption cleaning (tokenizer.py: basic_clean + whitespace_clean / lower / canonicalize_text)."""
    if mode is None:
        return text
    if mode not in CLEAN_MODES:
        raise ValueError(f"clean={mode!r}: expected one of {CLEAN_MODES}")
    import ftfy  # an open_clip dependency; only needed when mirroring open_clip

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if mode == "canonicalize":
        text = text.replace("_", " ").translate(_NO_PUNCTUATION).lower()
    elif mode == "lower":
        text = text.lower()
    return " ".join(text.split())


class BPETokenizer:
    kind = "bpe"
    pad_id = 0

    def __init__(self, tokenizer_json: str, max_tokens: int):
        self.tokenizer_json = tokenizer_json
        self.max_tokens = int(max_tokens)
        self._tok = _hf_tokenizer(tokenizer_json, self.max_tokens, self.pad_id, BPE_SPECIALS[0])
        if self._tok.token_to_id(BPE_SPECIALS[0]) != self.pad_id:
            raise ValueError("a BPE tokenizer's [PAD] must be id 0")

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int, max_tokens: int) -> BPETokenizer:
        from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
        from tokenizers import Tokenizer as RustTokenizer

        tok = RustTokenizer(models.BPE(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([
            normalizers.NFKC(), normalizers.Lowercase(),
            # Collapsing whitespace keeps "a  dog" and " a dog " identical and an all-blank caption empty.
            normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
        ])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=BPE_SPECIALS, show_progress=False,
            # Every byte is in the vocabulary, so no caption (emoji, accents) ever needs [UNK].
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        # Sorted so the result cannot depend on the order shards or Ray blocks arrive in.
        tok.train_from_iterator(sorted(captions), trainer=trainer)
        bos, eos = (tok.token_to_id(t) for t in BPE_SPECIALS[2:])
        # [BOS] [EOS] for an empty caption: a row is never all padding, so masked means never divide by zero.
        tok.post_processor = processors.TemplateProcessing(
            single="[BOS] $A [EOS]", special_tokens=[("[BOS]", bos), ("[EOS]", eos)])
        return cls(tok.to_str(), max_tokens)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        return _encode_with(self._tok, texts, self.max_tokens)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def attention_mask(self, ids: np.ndarray) -> np.ndarray:
        return ids != self.pad_id

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self.tokenizer_json, "max_tokens": self.max_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        return cls(d["tokenizer_json"], d["max_tokens"])


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_text(token) -> str | None:
    # tokenizer_config.json stores special tokens either as a string or as an AddedToken dict.
    return token.get("content") if isinstance(token, dict) else token


class HFTokenizer:
    """A Hugging Face tokenizer.json run with `tokenizers` alone: no transformers import when encoding.

    `clean` / `strip_sep_id` reproduce open_clip's HFTokenizer(clean=..., strip_sep_token=True); the defaults
    (None, None) reproduce plain transformers.
    """

    kind = "hf"

    def __init__(self, tokenizer_json: str, max_tokens: int, pad_id: int, pad_token: str,
                 clean: str | None = None, strip_sep_id: int | None = None):
        if clean not in CLEAN_MODES:
            raise ValueError(f"clean={clean!r}: expected one of {CLEAN_MODES}")
        self.tokenizer_json, self.max_tokens = tokenizer_json, int(max_tokens)
        self.pad_id, self.pad_token = int(pad_id), pad_token
        self.clean, self.strip_sep_id = clean, strip_sep_id
        self._tok = _hf_tokenizer(tokenizer_json, self.max_tokens, self.pad_id, pad_token)

    @classmethod
    def from_dir(cls, path: str | Path, max_tokens: int, clean: str | None = None,
                 strip_sep_token: bool = False) -> HFTokenizer:
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json (a Hugging Face fast-tokenizer file) in this folder")
        text = (path / "tokenizer.json").read_text()
        cfg, specials = _read_json(path / "tokenizer_config.json"), _read_json(path / "special_tokens_map.json")
        file_padding = json.loads(text).get("padding") or {}
        pad_token = (_token_text(cfg.get("pad_token")) or _token_text(specials.get("pad_token"))
                     or file_padding.get("pad_token"))
        vocab = _hf_tokenizer(text, 8, 0, "").get_vocab(with_added_tokens=True)
        pad_id = vocab.get(pad_token) if pad_token else _read_json(path / "config.json").get("pad_token_id")
        if pad_id is None:
            raise ValueError(f"{path}: no pad token in tokenizer_config.json, special_tokens_map.json or config.json")
        pad_token = pad_token or next(t for t, i in vocab.items() if i == pad_id)
        # The model's position table bounds the length: never pad past model_max_length / max_seq_length.
        caps = [cfg.get("model_max_length"), _read_json(path / "sentence_bert_config.json").get("max_seq_length")]
        max_tokens = min([int(max_tokens)] + [int(c) for c in caps if isinstance(c, (int, float))])
        sep_id = None
        if strip_sep_token:
            sep_id = vocab.get(_token_text(cfg.get("sep_token")) or _token_text(specials.get("sep_token")) or "")
            if sep_id is None:
                raise ValueError(f"{path}: strip_sep_token needs a sep_token in tokenizer_config.json")
        return cls(text, max_tokens, pad_id, pad_token, clean=clean, strip_sep_id=sep_id)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        ids = _encode_with(self._tok, [clean_text(t, self.clean) for t in texts], self.max_tokens)
        if self.strip_sep_id is not None:
            # open_clip writes 0, not pad_id, over [SEP] (identical for BERT, whose [PAD] is 0).
            ids[ids == self.strip_sep_id] = 0
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def attention_mask(self, ids: np.ndarray) -> np.ndarray:
        # What open_clip's HF text tower uses: `x != config.pad_token_id`.
        return ids != self.pad_id

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self.tokenizer_json, "max_tokens": self.max_tokens,
                "pad_id": self.pad_id, "pad_token": self.pad_token, "clean": self.clean,
                "strip_sep_id": self.strip_sep_id}

    @classmethod
    def from_dict(cls, d: dict) -> HFTokenizer:
        return cls(d["tokenizer_json"], d["max_tokens"], d["pad_id"], d["pad_token"], d.get("clean"),
                   d.get("strip_sep_id"))


def clip_vocab_path() -> Path:
    import importlib.util

    # Found without importing open_clip (which imports torch and timm) so a checkpoint check stays cheap.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ImportError("OpenCLIPTokenizer needs open_clip_torch installed (pip install open_clip_torch)")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def hash_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class OpenCLIPTokenizer:
    """OpenAI CLIP BPE: <start_of_text> ... <end_of_text>, zero-padded, truncation keeps <end_of_text> last.

    Runs open_clip's own SimpleTokenizer (the reference); the checkpoint keeps only the context length and the
    vocabulary's sha256, so a different open_clip vocabulary is refused on load instead of silently re-mapping.
    """

    kind = "open_clip"
    pad_id = 0

    def __init__(self, context_length: int = 77, vocab_sha256: str | None = None):
        from open_clip.tokenizer import SimpleTokenizer

        path = clip_vocab_path()
        self.vocab_sha256 = hash_file(path)
        if vocab_sha256 is not None and vocab_sha256 != self.vocab_sha256:
            raise ValueError(f"{path}: CLIP vocabulary sha256 {self.vocab_sha256[:12]}… differs from the "
                             f"checkpoint's {vocab_sha256[:12]}…; install the open_clip_torch it was trained with")
        self.max_tokens = self.context_length = int(context_length)
        self._tok = SimpleTokenizer(bpe_path=str(path), context_length=self.context_length)
        self.sot_id, self.eot_id = self._tok.sot_token_id, self._tok.eot_token_id

    def __len__(self) -> int:
        return self._tok.vocab_size

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        return self._tok(list(texts), context_length=self.context_length).numpy().astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        ids = ids[: ids.index(self.eot_id)] if self.eot_id in ids else ids
        return self._tok.decode([i for i in ids if i != self.sot_id]).strip()

    def attention_mask(self, ids: np.ndarray) -> np.ndarray:
        # Everything up to and including the (first) <end_of_text>: id 0 is "!" inside the text, not padding.
        eot = np.argmax(ids == self.eot_id, axis=-1)
        return np.arange(ids.shape[-1]) <= eot[..., None]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "context_length": self.context_length, "vocab_sha256": self.vocab_sha256}

    @classmethod
    def from_dict(cls, d: dict) -> OpenCLIPTokenizer:
        return cls(d["context_length"], d.get("vocab_sha256"))


def open_clip_tokenizer(model_name: str, tokenizer_dir: str | Path | None = None,
                        context_length: int | None = None, text_cfg: dict | None = None):
    """The tokenizer open_clip.get_tokenizer(model_name) builds, without the hub: HF ones come from tokenizer_dir.

    SigLIP / BERT / XLM-R models name an HF hub tokenizer (text_cfg.hf_tokenizer_name, e.g. timm/ViT-B-16-SigLIP);
    offline that folder must be given, holding that repo's tokenizer.json (+ tokenizer_config.json).
    `text_cfg`: the model config's text_cfg, for a model that is not one of open_clip's built-in names.
    """
    if text_cfg is None:
        from open_clip import get_model_config

        text_cfg = (get_model_config(model_name) or {}).get("text_cfg", {})
    length = context_length or text_cfg.get("context_length", 77)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    hub_name = text_cfg.get("hf_tokenizer_name")
    if not hub_name:
        return OpenCLIPTokenizer(length)
    if tokenizer_dir is None:
        raise FileNotFoundError(f"{model_name} uses the Hugging Face tokenizer {hub_name}; pass tokenizer_dir, a "
                                f"local copy of that repo's tokenizer files")
    if text_cfg.get("tokenizer_mode") or set(kwargs) - {"clean", "strip_sep_token"}:
        raise ValueError(f"{model_name}: tokenizer options {text_cfg.get('tokenizer_mode')}, {kwargs} unsupported")
    return HFTokenizer.from_dir(tokenizer_dir, length, clean=kwargs.get("clean", "whitespace"),
                                strip_sep_token=kwargs.get("strip_sep_token", False))


def tokenizer_from_dict(d: dict):
    kind = d.get("kind", "word")  # checkpoints written before sub-words have no "kind": the word tokenizer
    loaders = {"word": Tokenizer.from_dict, "char": CharTokenizer.from_dict, "bpe": BPETokenizer.from_dict,
               "hf": HFTokenizer.from_dict, "open_clip": OpenCLIPTokenizer.from_dict}
    if kind not in loaders:
        raise ValueError(f"tokenizer kind {kind!r}: expected one of {sorted(loaders)}")
    return loaders[kind](d)


def attention_mask(tokenizer, ids: np.ndarray) -> np.ndarray:
    """True on real tokens; the word tokenizer (no attention_mask, no pad_id attribute) pads with 0."""
    if hasattr(tokenizer, "attention_mask"):
        return tokenizer.attention_mask(ids)
    return ids != getattr(tokenizer, "pad_id", 0)
