"""The project's modules import each other without circles, counting imports inside functions too (a lazy
import that closes a circle still ties the two modules together), and loading a config pulls in neither torch
nor FAISS nor Ray."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a import b` names the module a.b where b is one, else a).
    A package's own import of its parent is not an edge: Python runs the parent first, whoever imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # `import pipeline.data.formats.shards as s` names the module itself
                    t = t.rpartition(".")[0]
                if t and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_lazy_and_relative_imports():
    graph = import_graph()
    assert "pipeline.data.formats.shards" in graph["pipeline.data.formats.counts"]  # imported inside a function
    assert "pipeline.config.loading" in graph["pipeline.config.jobs"]


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_loading_a_config_imports_neither_torch_nor_faiss_nor_ray():
    code = ("import sys; from pipeline.config import RunJobConfig, load_config; "
            "load_config(RunJobConfig, 'configs/demo.yaml', {'tune.space': {'loss.temperature': {'grid': [0.1]}}}); "
            "print(sorted(m for m in ('torch', 'faiss', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_index_shard_tasks_and_actors_do_not_import_torch():
    """Ray runs the index's shard builds and shard servers (`index.sharded`) in processes of their own, started
    for them: importing torch there cost each one about 2 s of CPU and its memory, for nothing it uses."""
    code = ("import sys; import pipeline.index.sharded, pipeline.index.embedding_passes; "
            "print(sorted(m for m in ('torch', 'pipeline.encoder') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# The package's rooms (a subpackage, or a top-level module) in layers, lowest first: a room imports rooms of its
# own layer or lower ones, never higher, and the rooms' graph has no circle. A new room must be given a layer.
LAYERS = [
    ("foundations", {"errors", "registry", "console", "storage", "distributed", "metrics", "ray_watchdog",
                     "tracking"}),
    ("components", {"models", "losses"}),
    ("config", {"config"}),
    ("data", {"data"}),
    ("stored models", {"checkpoint", "gallery", "encoder", "report_html"}),
    ("indexes and cluster", {"index", "cluster"}),
    ("jobs' parts", {"rerank", "report", "words", "evaluate", "zeroshot"}),
    ("training", {"training", "baselines"}),
    ("jobs", {"tune", "import_model", "preflight", "end_to_end", "bundled", "serve"}),
    ("entry points", {"arguments", "cli", "__main__", "pipeline"}),
]


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipeline"


def room_graph(graph: dict[str, set[str]]) -> dict[str, dict[str, list[str]]]:
    """room -> {room it imports: the module imports that make the edge}. The package's own __init__ (which
    re-exports `load`) is the top room and imports whatever it names."""
    out: dict[str, dict[str, list[str]]] = {room(m): {} for m in graph}
    for mod, targets in graph.items():
        for t in targets:
            if room(t) != room(mod):
                out[room(mod)].setdefault(room(t), []).append(f"{mod} -> {t}")
    return out


def layer_violations(rooms: dict[str, dict[str, list[str]]], layers=LAYERS) -> list[str]:
    level = {r: i for i, (_, members) in enumerate(layers) for r in members}
    unplaced = sorted(set(rooms) - set(level))
    bad = [f"{r} has no layer in LAYERS" for r in unplaced]
    for r, edges in sorted(rooms.items()):
        for t, why in sorted(edges.items()):
            if r in level and t in level and level[t] > level[r]:
                bad.append(f"{r} ({layers[level[r]][0]}) imports {t} ({layers[level[t]][0]}): {why[0]}")
    return bad


def test_the_layer_check_finds_an_upward_import_and_an_unplaced_room():
    rooms = {"models": {"config": ["pipeline.models.x -> pipeline.config.y"]}, "config": {}, "new": {}}
    bad = layer_violations(rooms)
    assert any(b.startswith("models (components) imports config (config)") for b in bad)
    assert "new has no layer in LAYERS" in bad
    assert layer_violations({"config": {"models": ["a -> b"]}, "models": {}}) == []


def test_packages_import_only_their_own_layer_or_lower():
    rooms = room_graph(import_graph())
    bad = layer_violations(rooms)
    assert not bad, "layering: " + "; ".join(bad)
    found = cycles({r: set(edges) for r, edges in rooms.items()})
    assert not found, "rooms that import one another: " + "; ".join(" <-> ".join(c) for c in found)
