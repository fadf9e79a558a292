"""report.html: one self-contained page (plots and thumbnails embedded as data URIs, no script, no external
resource) with the recall tables, recall@K curves, the rank histogram, training curves and example queries
both ways with hits marked. Formatting only: every number comes from report.json."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_recall_curves(curves: dict, path: Path) -> bool:
    """Recall@K for K = 1..50, both directions."""
    if not curves:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for d, label in (("i2t", "image → text"), ("t2i", "text → image")):
        ax.plot(range(1, len(curves[d]) + 1), curves[d], label=label)
    ax.set(xlabel="K", ylabel="Recall@K (%)", ylim=(0, 101), title="recall@K")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _rank_bins(top: int) -> list[int]:
    """Upper ends of log-spaced rank bins, 1, 2, 5, 10, 20, 50, ... up to the first at or past `top`: the bins
    end where recall@K is read, so the first bars add up to R@1, R@5, R@10."""
    uppers = [m * 10 ** e for e in range(len(str(top)) + 1) for m in (1, 2, 5)]
    return uppers[:next(i for i, u in enumerate(uppers) if u >= top) + 1]


def plot_rank_histogram(ranks: dict, path: Path) -> bool:
    """How far down the list the right answer sits, as a share of each direction's queries (there are several
    captions per image, so raw counts would not compare), on log-spaced rank bins labelled by the ranks they
    hold, the two directions' bars side by side."""
    if not ranks:
        return False
    import numpy as np

    plt = _plt()
    uppers = _rank_bins(max(max(ranks["i2t"], default=1), max(ranks["t2i"], default=1)))
    edges = np.array([0, *uppers]) + 0.5  # integer ranks, so no rank sits on an edge
    labels = [str(hi) if hi == lo + 1 else f"{lo + 1}–{hi}" for lo, hi in zip([0, *uppers], uppers)]
    x = np.arange(len(uppers))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for d, label, shift in (("i2t", "image → text", -0.2), ("t2i", "text → image", 0.2)):
        counts, _ = np.histogram(ranks[d], bins=edges)
        ax.bar(x + shift, 100 * counts / max(len(ranks[d]), 1), width=0.4, label=label)
    crowded = len(labels) > 7  # past ~7 ranges like "1001–2000" run into each other unless slanted
    ax.set_xticks(x, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set(xlabel="rank of the ground truth (1 = first)", ylabel="% of queries", title="rank histogram")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def thumbnail_jpeg(data: bytes, side: int = 96) -> bytes:
    """Image bytes -> JPEG bytes of at most side x side pixels, upright (decoded as the pipeline decodes)."""
    from PIL import Image

    from pipeline.data.transforms import decode_image

    img = decode_image(data)
    img.thumbnail((side, side), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def thumbnail(data: bytes, side: int = 96) -> str:
    """Image bytes -> a JPEG data URI of at most side x side pixels."""
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail_jpeg(data, side)).decode()


def thumbnails(images: dict[str, bytes], side: int = 96) -> dict[str, str]:
    """key -> thumbnail data URI of each image that decodes (one the gallery skipped gets a placeholder)."""
    out = {}
    for key, data in images.items():
        try:
            out[key] = thumbnail(data, side)
        except (ValueError, OverflowError, TypeError):
            continue
    return out


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _recall_rows(block: dict, ks: list[str]) -> list[list]:
    return [[name, *(f"{block[d][k]:.1f}" for k in ks), f"{block[d]['medr']:.0f}", f"{block[d]['meanr']:.1f}"]
            for d, name in (("i2t", "image → text"), ("t2i", "text → image"))]


def _img(uri: str | None, key: str, role: str) -> str:
    """A thumbnail framed by its role: `hit` (green and ticked, as hit captions are), `miss`, or `query`, the
    image asked about, which is neither."""
    inner = f'<img src="{uri}" alt="{html.escape(key)}">' if uri else '<div class="noimg">no image</div>'
    name = html.escape(key.rsplit("/", 1)[-1]) + (" ✓" if role == "hit" else "")
    return f'<figure class="{role}">{inner}<figcaption>{name}</figcaption></figure>'


def _rank_words(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(map(str, ranks[:-1])) + f" and {ranks[-1]}"


def _caption_groups(top: list[dict]) -> list[dict]:
    """The top-K captions with identical texts merged (datasets repeat a text across images): one entry per
    text at its best rank, with every rank it holds and those where the copy is the query image's own."""
    groups: dict[str, dict] = {}
    for rank, t in enumerate(top, 1):
        g = groups.setdefault(t["caption"], {"caption": t["caption"], "score": t["score"], "ranks": [],
                                             "own": []})
        g["ranks"].append(rank)
        g["own"] += [rank] if t["hit"] else []
    return list(groups.values())


def _duplicate_note(g: dict) -> str:
    """Why one line stands for several ranks, and which copy (if any) is the query image's."""
    if len(g["ranks"]) == 1:
        return ""
    others = [r for r in g["ranks"] if r not in g["own"]]
    at = f"same text at {_rank_words(g['ranks'])}"
    if not g["own"]:
        note = f"{at}, each the caption of another image"
    elif not others:
        note = f"{at}, all captions of this image"
    else:
        whose = "belongs to another image" if len(others) == 1 else "belong to other images"
        verb = "is" if len(g["own"]) == 1 else "are"
        note = f"{at}: {_rank_words(g['own'])} {verb} this image's own, {_rank_words(others)} {whose}"
    return f" <span class='dup'>({note})</span>"


def _caption_list(top: list[dict]) -> str:
    """An image query's top-K captions; `value` numbers each line by its rank once repeats are merged."""
    items = []
    for g in _caption_groups(top):
        role, tick = ("hit", " ✓") if g["own"] else ("miss", "")
        items.append(f"<li value='{g['ranks'][0]}' class='{role}'>{html.escape(g['caption'])} "
                     f"({g['score']:.2f}){tick}{_duplicate_note(g)}</li>")
    return f"<ol class='caps'>{''.join(items)}</ol>"


# Green means a hit, the same in both directions; the query image gets a dark neutral frame of its own.
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}
.plots img{max-width:49%}.plots img.wide{width:100%;max-width:100%}
.q{margin:1em 0}.q.i2t{display:flex;align-items:flex-start;gap:1em}.q.i2t ol{margin:0}
figure{display:inline-block;margin:.2em;text-align:center;font-size:.75em;border:3px solid #ddd;padding:2px}
figure.hit{border-color:#2a2}figure.query{border-color:#444}
figure img{display:block;width:96px;height:96px;object-fit:cover}
.noimg{width:96px;height:96px;background:#eee}ol.caps li.hit{color:#161;font-weight:600}code{font-size:.9em}
.dup{color:#666;font-weight:normal;font-size:.9em}"""
WIDE_PLOTS = {"training"}  # two panels side by side: shrunk to half the page, their labels would not read


def _example_parts(report: dict, thumbs: dict[str, str]) -> list[str]:
    """Example queries both ways, hits framed or written in green and ticked."""
    parts = []
    if report.get("examples"):
        parts.append(f"<h2>Caption → top-{len(report['examples'][0]['top'])} images</h2>")
        for ex in report["examples"]:
            imgs = "".join(_img(thumbs.get(t["key"]), t["key"], "hit" if t["hit"] else "miss")
                           for t in ex["top"])
            parts.append(f"<div class='q'><p><i>{html.escape(ex['query'])}</i></p>{imgs}</div>")
    if report.get("image_examples"):
        parts.append(f"<h2>Image → top-{len(report['image_examples'][0]['top'])} captions</h2>")
        for ex in report["image_examples"]:
            parts.append(f"<div class='q i2t'>{_img(thumbs.get(ex['query']), ex['query'], 'query')}"
                         f"{_caption_list(ex['top'])}</div>")
    return parts


def rerank_rows(block: dict) -> list[list[str]]:
    """Rows of the re-ranking table: each direction's R@K before -> after."""
    ks = list(block["t2i"]["before"])
    return [[name, *(f"{block[d]['before'][k]:.1f} → {block[d]['after'][k]:.1f}" for k in ks)]
            for d, name in (("i2t", "image → text"), ("t2i", "text → image"))]


def write_html(out: Path, report: dict, plots: list[Path], thumbs: dict[str, str],
               baselines: list[dict] | None = None) -> Path:
    """report.html in `out` from the report dict, the PNG plots and key -> thumbnail data URIs."""
    ks = [k for k in report["i2t"] if k.startswith("R@")]
    head = ["direction", *ks, "medr", "meanr"]
    parts = [f"<h1>Retrieval report</h1><p>Checkpoint <code>{html.escape(str(report['checkpoint']))}</code> — "
             f"{report['n_images']} images, {report['n_captions']} captions; rsum <b>{report['rsum']:.1f}</b>"
             + (f" (untrained: {report['untrained_rsum']:.1f})" if "untrained_rsum" in report else "") + "</p>",
             "<h2>Exact search</h2>", _table(head, _recall_rows(report, ks))]
    if report.get("comparison"):
        rows = report["comparison"]
        parts += ["<h2>Checkpoints compared (same gallery)</h2>", _table(
            ["checkpoint", *(f"i2t {k}" for k in ks), *(f"t2i {k}" for k in ks), "rsum", "medr i2t / t2i"],
            [[html.escape(r["label"]), *(f"{r['i2t'][k]:.1f}" for k in ks), *(f"{r['t2i'][k]:.1f}" for k in ks),
              f"{r['rsum']:.1f}", f"{r['i2t']['medr']:.0f} / {r['t2i']['medr']:.0f}"] for r in rows])]
    if baselines:
        parts += ["<h2>Baselines (same validation set)</h2>", _table(
            ["model", *(f"i2t {k}" for k in ks), *(f"t2i {k}" for k in ks), "rsum"],
            [[html.escape(r["label"]), *(f"{r['i2t'][k]:.1f}" for k in ks), *(f"{r['t2i'][k]:.1f}" for k in ks),
              f"{r['rsum']:.1f}"] for r in baselines])]
    for name, block in (report.get("protocols") or {}).items():
        parts += [f"<h2>COCO {html.escape(name.upper())} protocol</h2>", _table(head, _recall_rows(block, ks))]
    approx, idx = report.get("approximate"), report["index"]
    if approx:
        rk = [k for k in approx if k.startswith("R@")]
        parts += [f"<h2>Through the {html.escape(approx['type'])} index (text → image)</h2>",
                  _table(["search", *rk], [["exact", *(f"{report['t2i'][k]:.1f}" for k in rk)],
                                           [approx["type"], *(f"{approx[k]:.1f}" for k in rk)]])]
    rr = report.get("rerank")
    if rr:
        parts += [f"<h2>Re-ranked (fusion head over each query's top {rr['k']})</h2><p>"
                  f"{html.escape(rr.get('description', ''))} — {rr['ms_per_query']:.3f} ms per query</p>",
                  _table(["direction", *rr["t2i"]["before"]], [[html.escape(c) for c in row] for row in rerank_rows(rr)])]
    zs = report.get("zero_shot")
    if zs:
        parts += [f"<h2>Zero-shot classification ({zs['classes']} classes, prompt “{html.escape(zs['prompt'])}”)"
                  "</h2>", _table([k for k in zs if k.startswith("top")],
                                  [[f"{zs[k]:.1f}" for k in zs if k.startswith("top")]])]
    parts.append(f"<p>Index: {html.escape(str(idx.get('type')))}, recall@10 vs exact "
                 f"{idx.get('recall@10_vs_exact')}, built in {idx.get('build_s') or 0:.3f} s, "
                 f"{idx.get('qps') or 0:.0f} queries/s.</p>")
    if plots:
        parts += ["<h2>Plots</h2><div class='plots'>"] + [
            f'<img src="{_png(p)}" alt="{p.stem}"{" class=wide" * (p.stem in WIDE_PLOTS)}>' for p in plots]
        parts.append("</div>")
    parts += _example_parts(report, thumbs)
    skipped = {s: by for s, by in (report.get("data", {}).get("skipped") or {}).items() if by}
    parts.append("<h2>Data</h2><p>" + ("; ".join(f"{html.escape(s)}: " + ", ".join(
        f"{html.escape(r)} ×{n}" for r, n in by.items()) for s, by in skipped.items()) or "No sample was skipped.")
        + "</p>")
    shown = report.get("data", {}).get("skip_examples") or {}
    rows = [f"<li>{html.escape(s)} {html.escape(r)}, e.g. " + ", ".join(f"<code>{html.escape(k)}</code>" for k in keys)
            + "</li>" for s, by in shown.items() for r, keys in by.items() if keys]
    if rows:
        parts.append("<ul class='skips'>" + "".join(rows) + "</ul>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Retrieval report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


ZEROSHOT_BARS = 40  # classes drawn in the per-class plot: the 20 lowest and 20 highest recalls beyond this


def plot_class_recall(classes: list[dict], path: Path) -> bool:
    """Per-class recall as horizontal bars, lowest first (a large label set: its lowest and highest 20)."""
    if not classes:
        return False
    ranked = sorted(classes, key=lambda c: c["recall"])
    if len(ranked) > ZEROSHOT_BARS:
        ranked = ranked[:ZEROSHOT_BARS // 2] + ranked[-ZEROSHOT_BARS // 2:]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.25 * len(ranked)))
    ax.barh(range(len(ranked)), [c["recall"] for c in ranked], color="#4477aa")
    ax.set_yticks(range(len(ranked)), [c["name"] for c in ranked], fontsize=8)
    ax.set(xlabel="recall (%)", xlim=(0, 100), title="zero-shot recall per class")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_zeroshot_html(out: Path, block: dict, plot: Path | None) -> Path:
    """zeroshot.html in `out`: the scores, the per-class plot and the per-class table, from the zeroshot block."""
    heads = [k for k in ("top1", "top5", "mean_per_class_recall") if k in block]
    parts = [f"<h1>Zero-shot classification</h1><p>Checkpoint <code>{html.escape(block['checkpoint'])}</code> on "
             f"<code>{html.escape(block['data'])}</code>: {block['images']} images, {block['classes']} classes, "
             f"{block['n_templates']} prompt templates ({html.escape(block['templates'])})</p>",
             _table([h.replace("_", " ") + " %" for h in heads], [[f"{block[h]:.2f}" for h in heads]])]
    if plot is not None:
        parts.append(f'<div class="plots"><img src="{_png(plot)}" alt="per-class recall"></div>')
    parts += ["<h2>Per class</h2>", _table(["folder", "class name", "images", "recall %"], [
        [html.escape(c["folder"]), html.escape(c["name"]), c["images"], f"{c['recall']:.1f}"]
        for c in block["per_class"]])]
    skipped = block.get("skipped") or {}
    parts.append("<p>" + (", ".join(f"{html.escape(r)} ×{n}" for r, n in skipped.items()) + " skipped"
                          if skipped else "No image was skipped.") + "</p>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Zero-shot classification</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "zeroshot.html"
    path.write_text(page, encoding="utf-8")
    return path
