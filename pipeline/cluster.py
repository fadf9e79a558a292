"""Connecting to Ray: the existing cluster when one is given (RAY_ADDRESS, or `ray job submit`), otherwise an
embedded local Ray sized so Ray Data is not starved by the training workers. Only `cli` and `jobs/` call this.
"""
from __future__ import annotations

import logging
import os


def local_cpus() -> int:
    """Logical CPUs for an embedded Ray: more than the cores, because training workers each hold one for the
    whole run while Ray Data's decode tasks need slots of their own to keep them fed."""
    return max(8, 2 * (os.cpu_count() or 2))


def connect(address: str | None = None, quiet: bool = True) -> str:
    """ray.init on the given/ambient cluster, or a fresh local one. -> 'cluster' or 'local'."""
    import ray

    if ray.is_initialized():
        return "cluster"
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": logging.WARNING} if quiet else {}
    if address:
        ray.init(address=address, **kwargs)
        return "cluster"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The dashboard process also serves the state API that Ray Train polls; without it Train logs a warning
    # every few seconds.
    ray.init(num_cpus=local_cpus(), **kwargs)
    _quiet_data()
    return "local"


def _quiet_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.print_on_execution_start = False
