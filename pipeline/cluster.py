"""Connecting to Ray: the existing cluster when one is given (RAY_ADDRESS, or `ray job submit`), otherwise an
embedded local Ray sized so Ray Data is not starved by the training workers. Only `cli` and `jobs/` call this.
"""
from __future__ import annotations

import logging
import os

from pipeline import console
from pipeline.console import mark_start


def local_cpus() -> int:
    """Logical CPUs for an embedded Ray: more than the cores, because training workers each hold one for the
    whole run while Ray Data's decode tasks need slots of their own to keep them fed."""
    return max(8, 2 * (os.cpu_count() or 2))


# Ray Train's controller checks on its workers every 2 s and starts an actor that watches for spot-node
# preemption. On one machine a short run pays for both: up to 2 s to see the workers finish, more to tear the
# group down, a process that watches nothing (a smoke run: 29.7 s -> 23.8 s, docs/benchmarks.md). The driver's
# values travel to the controller and workers (Ray Train propagates these variables); a value set by the user wins.
ONE_NODE_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def settle_one_node_train_env(nodes: int | None = None) -> None:
    """On a one-node cluster (the embedded local Ray, or one `ray start --head`), Ray Train's controller polls
    every 0.5 s and runs no preemption watcher; larger clusters keep Ray's defaults. `nodes`: the live nodes,
    asked of the connected cluster when not given."""
    if nodes is None:
        import ray

        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes == 1:
        for key, value in ONE_NODE_TRAIN_ENV.items():
            os.environ.setdefault(key, value)


def connect(address: str | None = None, command: str = "pipeline") -> str:
    """ray.init on the given/ambient cluster, or a fresh local one. -> 'cluster' or 'local'. Unless verbose,
    Ray's own output goes to the command's log file (pipeline.console)."""
    import ray

    if ray.is_initialized():
        return "cluster"
    console.quiet_ray(command)
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {} if console.verbose() else {"logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
        where = "cluster"
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # The dashboard process also serves the state API that Ray Train polls; without it Train logs a
        # warning every few seconds.
        from pipeline.ray_watchdog import watch

        watch()  # a driver killed outright would leave some of the embedded Ray's processes running
        ray.init(num_cpus=local_cpus(), **kwargs)
        where = "local"
    console.filter_worker_output()
    _quiet_data()
    mark_start("ray")
    return where


def _quiet_data() -> None:
    """Ray Data's own bars and per-dataset progress logs are off: the project draws one bar per phase."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.print_on_execution_start = False
    if not console.verbose():
        ctx.enable_progress_bars = False
        console.redirect_ray_loggers()


def fits(nodes: list[dict], num_workers: int, cpus: float, gpus: float) -> bool:
    """Whether `num_workers` bundles of {CPU: cpus, GPU: gpus} can ever be placed on these nodes' resources
    ({'CPU': .., 'GPU': ..} each), first fit on the roomiest node, as a spread placement group would."""
    free = [dict(n) for n in nodes]
    for _ in range(num_workers):
        room = [n for n in free if n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus]
        if not room:
            return False
        best = max(room, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        best["CPU"], best["GPU"] = best.get("CPU", 0) - cpus, best.get("GPU", 0) - gpus
    return True


def check_resources(scaling) -> None:
    """Before fit(): the training workers must fit the cluster, or Ray waits for them forever (the autoscaler
    only logs that no node type fits). An autoscaling cluster is given `scaling.resource_wait_s` to grow.
    Raises ConfigError in one line naming what was asked and what there is."""
    import time

    import ray

    from pipeline.config import ConfigError

    gpus = 1.0 if scaling.use_gpu else 0.0
    deadline = time.time() + scaling.resource_wait_s
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if fits(nodes, scaling.num_workers, scaling.cpus_per_worker, gpus):
            return
        if time.time() >= deadline:
            break
        time.sleep(min(5.0, max(0.1, deadline - time.time())))
    have = ", ".join(f"node {i}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU" for i, n in enumerate(nodes))
    ask = f"{scaling.num_workers} workers x ({scaling.cpus_per_worker:g} CPU" + (", 1 GPU)" if gpus else ")")
    fix = "set scaling.use_gpu=false or add GPU nodes" if gpus and not any(n.get("GPU") for n in nodes) else \
        "lower scaling.num_workers or scaling.cpus_per_worker, or add nodes"
    waited = f" after waiting {scaling.resource_wait_s:g} s" if scaling.resource_wait_s else ""
    raise ConfigError(f"the cluster cannot place {ask}{waited}: it has {have or 'no live nodes'}; {fix} "
                      "(on an autoscaling cluster, set scaling.resource_wait_s to wait for it to grow)")
