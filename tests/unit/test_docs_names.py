"""The docs name only code that exists: every backticked `module.function` (or `package.module.Class.method`)
of the package in README.md and docs/*.md imports and has that attribute, and every backticked `path/file.py`
is a file of the repository. Config keys (`data.train`, `index.type`) and file names (`metrics.jsonl`) look like
dotted names and are skipped; docs/benchmarks.md is a log of measurements, each naming the code of its day."""
import importlib
import re
from pathlib import Path

import pytest

from pipeline.config import RunJobConfig, valid_keys

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]
FILE_SUFFIXES = {"yaml", "json", "jsonl", "npz", "npy", "pt", "pth", "md", "csv", "txt", "tar", "parquet", "faiss",
                 "png", "html", "safetensors", "bin", "log", "lock", "gz"}
TICKED = re.compile(r"`([^`\s]+)`")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+(\(\))?$")
PATH = re.compile(r"^[\w./-]+\.py$")
MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
           for p in (ROOT / "pipeline").rglob("*.py")}
KEYS = set(valid_keys(RunJobConfig))


def _module_and_rest(name: str) -> tuple[str, list[str]] | None:
    """`data.epoch.plan.draw_shards` -> ("pipeline.data.epoch.plan", ["draw_shards"]); also full `pipeline.x`
    names, and a name whose first part is a module's own name (`objective.ContrastiveObjective`)."""
    parts = name.split(".")
    if parts[0] == "pipeline":
        parts = parts[1:]
    for cut in range(len(parts), 0, -1):
        candidates = [m for m in MODULES if m == "pipeline." + ".".join(parts[:cut])
                      or (cut == 1 and m.endswith("." + parts[0]))]
        if len(candidates) == 1:
            return candidates[0], parts[cut:]
        if candidates:
            return None  # a leaf name two modules share: ambiguous, left to the reader
    return ("pipeline", parts) if name.startswith("pipeline.") else None


def names_in_docs() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for token in TICKED.findall(doc.read_text()):
            token = token.rstrip(".,:;")
            bare = token.removesuffix("()")
            if bare.rpartition(".")[2] in FILE_SUFFIXES:
                continue
            if DOTTED.match(token) and bare not in KEYS and not any(k.startswith(bare + ".") for k in KEYS):
                out.append((doc.name, bare))
            elif PATH.match(token):
                out.append((doc.name, token))
    return out


def missing(name: str) -> str | None:
    """Why `name` (a dotted name or a .py path) does not exist, or None when it does."""
    if name.endswith(".py"):
        rel = name.removeprefix("./")
        bases = (ROOT, ROOT / "pipeline", ROOT / "tests" / "unit", ROOT / "tests" / "integration", ROOT / "bench")
        if any((base / rel).is_file() for base in bases):
            return None
        return "no such file"
    found = _module_and_rest(name)
    if found is None:
        return None  # not the package's: ray.train, torch.distributed, a class written bare
    module, rest = found
    obj = importlib.import_module(module)
    for attr in rest:
        if not hasattr(obj, attr):
            return f"{module} has no {'.'.join(rest)}"
        obj = getattr(obj, attr)
    return None


def test_the_check_catches_a_stale_name_and_a_moved_file():
    assert missing("training.loop.TrainLoop.run") is None and missing("pipeline.load") is None
    assert missing("training.loop.no_such_function") is not None
    assert missing("pipeline/train.py") == "no such file" and missing("training/driver.py") is None
    assert missing("ray.train.report") is None  # not ours


@pytest.mark.parametrize("doc", [d.name for d in DOCS])
def test_docs_name_only_code_that_exists(doc):
    bad = [f"`{name}`: {why}" for d, name in names_in_docs() if d == doc for why in [missing(name)] if why]
    assert not bad, f"{doc} names code that does not exist: " + "; ".join(sorted(set(bad)))
