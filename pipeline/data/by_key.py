"""The few gallery images a report shows, read by key: in the driver for a small gallery
(`local_passes.images_by_key`), else a Ray Data pass that keeps only the wanted rows before decoding anything.
The report makes its thumbnails of them (`report_html.thumbnails`)."""
from __future__ import annotations


def images_by_key(paths: list[str], keys: list[str], max_in_driver: int = 0) -> dict[str, bytes]:
    """key -> image bytes of the wanted samples of `paths`: a Ray Data pass that keeps only those rows (a
    gallery of at most `max_in_driver` images is read in the driver). Keys not found are left out."""
    from pipeline.data import local_passes
    from pipeline.data.ingest import read_shards

    wanted = set(keys)
    if not wanted:
        return {}
    if local_passes.fits_in_driver(paths, max_in_driver):
        return local_passes.images_by_key(paths, wanted)
    from ray.data.expressions import col

    # an Arrow predicate: a Python function here makes Ray warn on every report
    rows = read_shards(paths).filter(expr=col("key").is_in(sorted(wanted))).take_all()
    return {row["key"]: row["image"] for row in rows if row["image"] is not None}
