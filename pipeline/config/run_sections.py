"""The run's own sections: where a run lives and what it keeps (`run.*`, with its trackers), and how S3 is
reached (`storage.*`)."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.loading import _check, _f
from pipeline.tracking.plan import TRACKERS


@dataclass(frozen=True)
class RunConfig:
    name: str = _f("demo", "run name; running the same name again resumes from its latest checkpoint")
    storage_path: str = _f("runs", "parent of the run directory (local or s3://bucket/prefix)")
    keep_checkpoints: int = _f(2, "how many epoch checkpoints to keep (the latest are kept)")
    max_failures: int = _f(0, "worker failures (a crashed process, a lost node) recovered from by restarting the "
                              "workers from the last checkpoint; 0: fail at once, -1: no limit")
    allow_config_change: bool = _f(False, "resume a run even though model-, loss- or data-shaping keys differ "
                                          "from its checkpoint's (the differences go into attempts.jsonl)")
    record_keys: bool = _f(False, "every worker writes the keys each step trained to <run_dir>/keys/rank<r>.jsonl "
                                  "(local run directories; to audit that a resumed epoch lost and repeated nothing)")
    checkpoint_every_steps: int = _f(0, "also checkpoint every this many training steps, mid-epoch; a resumed "
                                        "run continues the epoch where the checkpoint left it; 0: epoch ends only")
    report_to: str | list = _f([], "experiment trackers rank 0 writes to beside metrics.jsonl: a list of tensorboard "
                                   "(<run_dir>/tensorboard), mlflow, wandb (or one string, comma-separated)")
    mlflow_uri: str = _f("", "MLflow tracking URI (http://host:5000, sqlite:///path/mlflow.db, databricks); "
                             "empty: sqlite:///<run.storage_path>/mlflow.db, a database beside the runs")
    experiment: str = _f("", "MLflow experiment and W&B project the run is logged under; empty: run.name (a "
                             "sweep's trials: the sweep's run.name)")

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()) and "/" not in self.name and "\\" not in self.name
               and self.name.strip(".") != "",
               f"run.name={self.name!r} must be a folder name (no '/', not '.' or '..'): the run directory is "
               "<run.storage_path>/<run.name>")
        _check(self.keep_checkpoints >= 1, "run.keep_checkpoints must be at least 1")
        _check(self.max_failures >= -1, "run.max_failures must be >= -1 (-1: no limit)")
        _check(self.checkpoint_every_steps >= 0, "run.checkpoint_every_steps must be >= 0 (0: at epoch ends only)")
        trackers = self.report_to.split(",") if isinstance(self.report_to, str) else self.report_to
        trackers = [str(t).strip().lower() for t in trackers if str(t).strip()]
        unknown = [t for t in trackers if t not in TRACKERS]
        _check(not unknown, f"run.report_to: {', '.join(map(repr, unknown))} is not a tracker; choose from "
                            f"{', '.join(TRACKERS)}")
        object.__setattr__(self, "report_to", list(dict.fromkeys(trackers)))
        _check(not ("mlflow" in trackers and not self.mlflow_uri and self.storage_path.startswith("s3://")),
               "run.mlflow_uri is needed with run.report_to=mlflow and an s3:// run.storage_path: MLflow keeps "
               "runs in a database or a tracking server, not in S3; give http://host:5000 or sqlite:///path")

    def tracking_uri(self) -> str:
        """Where MLflow runs go: run.mlflow_uri, or a SQLite database beside the runs."""
        from pipeline.tracking.plan import default_mlflow_uri

        return self.mlflow_uri or default_mlflow_uri(self.storage_path)

    def run_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


@dataclass(frozen=True)
class StorageConfig:
    endpoint_url: str = _f("", "S3-compatible endpoint for s3:// paths (MinIO, Ceph, ...); empty: AWS, or "
                              "AWS_ENDPOINT_URL. Credentials always come from the AWS chain, never the config")
    region: str = _f("", "S3 region; empty: from the AWS chain")

    def __post_init__(self) -> None:
        _check(not self.endpoint_url or self.endpoint_url.startswith(("http://", "https://")),
               f"storage.endpoint_url={self.endpoint_url!r} must start with http:// or https://")
        _check("@" not in self.endpoint_url, "storage.endpoint_url must not carry credentials; use the AWS "
                                              "credential chain (AWS_ACCESS_KEY_ID, ~/.aws, instance roles)")
