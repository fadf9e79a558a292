"""The search service's parts without Ray: request checking (each bad input a 4xx with one line naming what to
change), the Searcher against a brute-force search over the same vectors (one query and batches with a k of
their own, flat and HNSW), the stored-image lookup against the bytes as written (tar, Parquet, image folder),
and `pipeline search` printing captions and writing its hits' images.

The model is a small OpenCLIP ViT at random (tests/models.py); the gallery is scikit-image's real photos,
portrait and landscape, with their captions."""
import base64
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline.serve.requests import MAX_K, MAX_TEXT_CHARS, ApiError, parse_search
from tests import faults

pytest.importorskip("open_clip")
pytest.importorskip("skimage")

JSON = "application/json"


def _png(size=(40, 24)) -> bytes:
    return faults.encode(Image.new("RGB", size, (200, 30, 30)), "PNG")


def _form(fields: dict[str, bytes | str]) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser's FormData sends it -> (body, Content-Type)."""
    boundary = "----pipeline-test-boundary"
    parts = []
    for name, value in fields.items():
        head = f'Content-Disposition: form-data; name="{name}"'
        if isinstance(value, bytes):
            head += f'; filename="{name}.png"\r\nContent-Type: image/png'
        else:
            value = value.encode()
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("body,ctype,status,says", [
    (b'{"text": ""}', JSON, 422, "'text' is empty"),
    (b'{"text": "   "}', JSON, 422, "'text' is empty"),
    (json.dumps({"text": "a" * 100_000}).encode(), JSON, 413, f"at most {MAX_TEXT_CHARS}"),
    (b'{"text": "caf\xe9"}', JSON, 400, "not UTF-8"),
    (b'{"text": "a red', JSON, 400, "not valid JSON"),
    (b'["a red square"]', JSON, 400, "must be a JSON object"),
    (b'{"text": "a", "k": 0}', JSON, 422, f"ask for 1 to {MAX_K}"),
    (b'{"text": "a", "k": -1}', JSON, 422, f"ask for 1 to {MAX_K}"),
    (b'{"text": "a", "k": 1000000}', JSON, 422, f"ask for 1 to {MAX_K}"),
    (b'{"text": "a", "k": "ten"}', JSON, 422, "'k' must be a whole number"),
    (b'{"text": "a", "k": 2.5}', JSON, 422, "'k' must be a whole number"),
    (b'{"text": "a", "k": true}', JSON, 422, "'k' must be a whole number"),
    (b'{"text": "a", "kk": 3}', JSON, 422, "unknown key 'kk'"),
    (b'{"text": "a", "image": "iVBO"}', JSON, 422, "exactly one of 'text'"),
    (b'{"k": 3}', JSON, 422, "exactly one of 'text'"),
    (b'{"text": 7}', JSON, 422, "'text' must be a string"),
    (b'{"text": "a", "rerank": true}', JSON, 422, "no re-ranker"),
    (b'{"text": "a", "rerank": "maybe"}', JSON, 422, "'rerank' must be true or false"),
    (b'{"image": "not base64!"}', JSON, 422, "not valid base64"),
    (json.dumps({"image": base64.b64encode(b"GIF89a no image").decode()}).encode(), JSON, 422,
     "cannot be read as an image"),
    (json.dumps({"image": base64.b64encode(faults.bomb_png()).decode()}).encode(), JSON, 413, "megapixels"),
    (b"text=a", "application/x-www-form-urlencoded", 415, "send application/json or multipart/form-data"),
    (_form({"image": b"%PDF-1.4 not an image"})[0], _form({})[1], 422, "cannot be read as an image"),
    (_form({"image": _png(), "k": "0"})[0], _form({})[1], 422, f"ask for 1 to {MAX_K}"),
    (_form({"image": b""})[0], _form({})[1], 422, "'image' is empty"),
    (b"x" * (17 << 20), JSON, 413, "send at most"),
])
def test_bad_requests_are_4xx_with_one_line_naming_the_fix(body, ctype, status, says):
    with pytest.raises(ApiError) as e:
        parse_search(body, ctype, rerank_available=False)
    assert e.value.status == status and says in e.value.message, (e.value.status, e.value.message)
    assert "\n" not in e.value.message


def test_good_requests_read_as_their_queries():
    q = parse_search(b'{"text": " a red square ", "k": 3}', JSON, False)
    assert (q.kind, q.text, q.k, q.rerank) == ("text", "a red square", 3, False)
    q = parse_search(b'{"text": "a", "rerank": true}', "application/json; charset=utf-8", True)
    assert q.k == 10 and q.rerank
    png = _png((24, 40))  # portrait
    for body, ctype in [(json.dumps({"image": base64.b64encode(png).decode(), "k": 2}).encode(), JSON),
                        _form({"image": png, "k": "2", "rerank": "false"})]:
        q = parse_search(body, ctype, False)
        assert q.kind == "image" and q.k == 2 and q.image.size == (24, 40) and q.image.mode == "RGB"


# ------------------------------------------------------------------------------------------ the Searcher


@pytest.fixture(scope="module")
def indexes(tmp_path_factory):
    """A flat and an HNSW index over the photo set as one tar shard, embedded in this process."""
    from tests.models import index_in_process, photo_gallery

    tmp = tmp_path_factory.mktemp("search")
    ckpt, shards = photo_gallery(tmp)
    out = {kind: index_in_process(ckpt, shards, str(tmp / kind), kind) for kind in ("flat", "hnsw")}
    return out, shards


def _brute_force(index_dir, name, q, k):
    """The top-k rows of `name` (images | captions) by inner product, computed here from its vectors."""
    from pipeline.index.embedding_passes import read_columns, vectors_of

    table = read_columns(f"{index_dir}/{name}.parquet", ["key", "vector"])
    scores = vectors_of(table) @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [table.column("key")[int(i)].as_py() for i in order], scores[order]


def test_search_matches_brute_force_one_query_and_batched(indexes):
    from pipeline.index.searcher import Searcher

    dirs, _ = indexes
    s = Searcher.open(dirs["flat"])
    texts = ["a smiling astronaut in an orange spacesuit", "a cat", "a cup of coffee on a saucer"]
    q = s.encoder.encode_text(texts).numpy()
    batched = s.text(texts, k=[1, 3, 5])
    for i, text in enumerate(texts):
        keys, scores = _brute_force(dirs["flat"], "images", q[i], [1, 3, 5][i])
        assert [h["key"] for h in batched[i]] == keys, text
        np.testing.assert_allclose([h["score"] for h in batched[i]], scores, rtol=1e-5)
        assert [h["rank"] for h in batched[i]] == list(range(1, len(keys) + 1))
        assert all(h["caption"] for h in batched[i])  # each image hit shows a caption of its image
        _same_hits(s.text([text], k=[1, 3, 5][i]), [batched[i]])  # alone, the same answer
    photo = Image.open(io.BytesIO(s.gallery_images().image_bytes(batched[0][0]["key"])))
    (hit,) = s.images([photo], k=1)[0]
    keys, _ = _brute_force(dirs["flat"], "captions", s.encoder.encode_image([photo]).numpy()[0], 1)
    assert hit["image"] == hit["key"] and hit["caption"]
    assert keys == [hit["key"]]


def test_an_approximate_index_answers_a_batch_as_each_query_alone(indexes):
    from pipeline.index.searcher import Searcher

    dirs, _ = indexes
    s = Searcher.open(dirs["hnsw"])
    assert s.meta["type"] == "hnsw"
    texts = ["an astronaut", "a rocket on its launch pad", "a coin", "a man with a camera"]
    ks = [2, 7, 2, 4]
    _same_hits(s.text(texts, k=ks), [s.text([t], k=k)[0] for t, k in zip(texts, ks)])


def _same_hits(a: list[list[dict]], b: list[list[dict]]) -> None:
    """The same hits in the same order; scores as close as a batched and a lone forward pass give."""
    assert [[(h["key"], h["caption"]) for h in q] for q in a] == [[(h["key"], h["caption"]) for h in q] for q in b]
    np.testing.assert_allclose([h["score"] for q in a for h in q], [h["score"] for q in b for h in q], atol=1e-5)


def test_a_model_of_another_size_is_refused(indexes, tmp_path):
    from pipeline.index.searcher import Searcher

    dirs, _ = indexes

    class Wide:
        embed_dim = 64

    with pytest.raises(ValueError, match="embeds into 64 dimensions but the index .* holds 32"):
        Searcher.open(dirs["flat"], encoder=Wide())


# ---------------------------------------------------------------------------------- stored images by key


def test_image_lookup_returns_the_stored_bytes_from_tar_parquet_and_files(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.data.formats.lookup import ImageLookup
    from pipeline.data.formats.photos import write_photo_shards

    (tar,) = write_photo_shards(str(tmp_path / "t"))["shards"]
    (par,) = write_photo_shards(str(tmp_path / "p"), fmt="parquet")["shards"]
    with tarfile.open(tar) as t:  # the reference: the tar module's own reading of each member
        expected = {f"{tar.rsplit('/', 1)[1]}/{m.name.split('.')[0]}": t.extractfile(m).read()
                    for m in t.getmembers() if m.name.endswith(".jpg")}
    table = pq.read_table(par, columns=["key", "jpg"]).to_pylist()
    expected |= {f"{par.rsplit('/', 1)[1]}/{r['key']}": r["jpg"] for r in table}
    folder = tmp_path / "folder" / "sub"
    folder.mkdir(parents=True)
    (folder / "wide.png").write_bytes(_png((48, 20)))
    sources = {k: (tar if ".tar/" in k else par, "") for k in expected}
    sources["sub/wide"] = (str(tmp_path / "folder") + "/", str(folder / "wide.png"))
    sources["web/x"] = (tar, "https://example.com/x.jpg")  # a URL is not fetched: the shard has no such member
    expected["sub/wide"] = (folder / "wide.png").read_bytes()
    lookup = ImageLookup(sources)
    assert len(expected) > 10
    for key, data in expected.items():
        assert lookup.image_bytes(key) == data, key
    with pytest.raises(OSError, match="holds no image for it"):
        lookup.image_bytes("web/x")
    with pytest.raises(KeyError):
        lookup.image_bytes("00000.tar/nope")


def test_search_command_prints_captions_and_writes_hit_images(indexes, tmp_path, capsys):
    from pipeline.cli import main

    dirs, _ = indexes
    out = tmp_path / "hits"
    assert main(["search", "--index", dirs["flat"], "--text", "an astronaut", "--k", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    listed = json.loads((out / "hits.json").read_text())
    assert len(listed) == 3 and all("file" in h for h in listed)
    for h in listed:
        assert h["caption"] in printed and h["key"] in printed
        with Image.open(out / h["file"]) as img:
            assert img.size[0] > 100  # the stored photo, not a thumbnail
    assert f"hit images: {out} (3 of 3 written" in printed


@pytest.mark.parametrize("extra,says", [
    (["--port", "0"], "--port 0: give a TCP port from 1 to 65535"),
    (["--replicas", "0"], "--replicas 0: run at least 1 replica"),
    (["--checkpoint", "/no/such/ckpt"], "--checkpoint /no/such/ckpt does not exist"),
    (["--rerank", "/no/such/rerank"], "--rerank /no/such/rerank:"),
    (["--index", "/no/such/index"], "--index /no/such/index: /no/such/index holds no index"),
])
def test_serve_refuses_bad_flags_in_one_line_before_ray(indexes, tmp_path, extra, says):
    from tests.unit.test_boundaries import _cli

    dirs, _ = indexes
    out = _cli(["serve", "--index", dirs["flat"], *extra], tmp_path)
    assert out.returncode == 2 and out.stdout.strip() == "NO_RAY", out.stdout + out.stderr
    assert says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_run_that_trained_a_reranker_offers_it(indexes, tmp_path):
    """`pipeline serve` over a run with rerank.enabled takes its head without --rerank: the checkpoint holds it."""
    import shutil

    from pipeline import checkpoint
    from pipeline.index.searcher import read_meta
    from pipeline.index.sharded import index_checkpoint
    from pipeline.rerank.job import run_head

    dirs, _ = indexes
    ckpt = index_checkpoint(dirs["flat"], read_meta(dirs["flat"]))
    assert run_head(ckpt) is None and run_head(str(tmp_path / "nothing")) is None
    shutil.copytree(ckpt, tmp_path / "with_head")
    (tmp_path / "with_head" / checkpoint.HEAD).write_bytes(b"weights")
    assert run_head(str(tmp_path / "with_head")) == str(tmp_path / "with_head")
