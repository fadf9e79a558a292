"""What the commands check before any Ray work, each failure one line that says what to change: S3 reachable,
outputs writable, shards there and non-empty, checkpoints whole and loadable, a query image readable."""
from __future__ import annotations

from pathlib import Path

from pipeline import storage
from pipeline.data.formats import files
from pipeline.config import ConfigError


def check_job(cfg, splits=("train", "val"), writes=None) -> None:
    """What a training job checks before any Ray work, each failure one line: S3 reachable with the AWS chain's
    credentials for every s3:// path, the run directory (and `writes`) writable, synthetic data written only
    where the config points at the synthetic default, the shards there and non-empty."""
    from pipeline.data.formats.synthetic import ensure_data

    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    files.configure(cfg.data)  # a CSV's columns (data.csv_*), for every read in this process
    if hasattr(cfg, "run") and cfg.run.report_to:
        check_trackers(cfg.run)
    specs = {f"data.{s}": getattr(cfg.data, s) for s in splits if s != "train" or not isinstance(cfg.data.train, list)}
    if "train" in splits and isinstance(cfg.data.train, list):  # each source checked under its own name
        specs = {f"data.train[{i}] ({s['name']})": s["path"] for i, s in enumerate(cfg.data.train)} | specs
    for key, spec in specs.items():
        for part in remote_parts(spec):
            storage.check_access(part, key)
    for uri, key in [(cfg.run.storage_path, "run.storage_path"), *(writes or [])]:
        storage.check_access(uri, key, write=True)
    ensure_data(cfg.data)
    check_paths(*[x for key, spec in specs.items() for x in (spec, key)])
    if hasattr(cfg, "model"):
        from pipeline.models.weights import WeightsError
        from pipeline.training.warm_start import check_model

        try:
            check_model(cfg)  # weights that do not fit, an image size a ViT cannot take: here, not in a worker
        except (WeightsError, ValueError) as e:
            raise ConfigError(str(e)) from None


def check_trackers(run) -> None:
    """run.report_to: each tracker installed, and an MLflow server answering, before any Ray work."""
    from pipeline.tracking.plan import check_installed

    check_installed(run.report_to)
    uri = run.tracking_uri()
    if "mlflow" in run.report_to and uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(f"run.mlflow_uri={uri}: no MLflow tracking server answers there ({reason}); start "
                              "one (mlflow server --port 5000) or point run.mlflow_uri at one") from None


def check_eval_job(cfg, data: str, out: str, checkpoints: list[str]) -> None:
    """index / evaluate: the S3 paths reachable, the output folder writable, before any Ray work."""
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)
    files.configure(cfg.data)  # a CSV's columns (data.csv_*), for every read in this process
    for part in remote_parts(data):
        storage.check_access(part, "--data")
    for c in checkpoints:
        if storage.is_remote(c):
            storage.check_access(c, "--checkpoint")
    storage.check_access(out, "--out", write=True)


def remote_parts(spec: str) -> list[str]:
    from pipeline.data.ingest import split_specs

    return [p for p in split_specs(spec) if storage.is_remote(p)]


def check_paths(*pairs: str) -> list[str]:
    """Each (spec, key) pair must match non-empty shards. -> the paths of the last pair."""
    from pipeline.data.ingest import check_shards, expand_paths

    out: list[str] = []
    for spec, key in zip(pairs[::2], pairs[1::2]):
        out = expand_paths(spec, key)
        check_shards(out, key)
    return out


def require_checkpoint(path: str) -> str:
    from pipeline.checkpoint import check_loadable, find_latest

    ckpt = find_latest(path)
    if ckpt is None:
        raise ConfigError(f"--checkpoint {path}: no checkpoint there (expected model.pt, tokenizer.json, "
                          "config.json, state.json, or a run dir with checkpoints/epoch_*)")
    check_loadable(ckpt)  # every file's hash, and the weights fit: here, not inside an embedding actor
    return ckpt


def query_image(path: str):
    """The --image query decoded here, so a corrupt, truncated or oversized file is one line, not PIL's
    traceback from inside the search."""
    import warnings

    from PIL import Image

    if not Path(path).is_file():
        raise ConfigError(f"--image {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL only warns below 2x its limit
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ConfigError(f"--image {path}: the image claims more than {Image.MAX_IMAGE_PIXELS} pixels; "
                          "resize it before searching") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise ConfigError(f"--image {path} cannot be read as an image ({e}); give a JPEG, PNG or WebP "
                          "file") from None
