"""A gloo process group for the tests' spawned workers (`torch.multiprocessing.spawn`), no Ray."""
import contextlib

import torch.distributed as dist


@contextlib.contextmanager
def process_group(init_file: str, rank: int, world: int):
    """Joined through `init_file`; every rank waits for the others before the group is destroyed. A rank that
    destroys its group while a peer is still writing its results can abort that peer inside gloo ("terminate
    called without an active exception", SIGABRT), seen once in test_word_objectives."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
