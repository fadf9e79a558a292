"""scaling.strategy=fsdp: the towers sharded across the workers with torch's FSDP2 (`fully_shard`), and what the
rest of the loop needs to go on as under DDP.

- Units: each tower's blocks (`memory.shard_units`), then each tower, then the `TwoTower` as the root, so a block's
  parameters are all-gathered just before it runs and freed after. The loss's scale and bias and the fusion head
  stay whole on every worker (FSDP2 shards no scalars); their gradients are averaged by hand, as DDP would.
- The optimiser is rebuilt over the sharded parameters, with the same groups in the same order, and takes the
  state the unsharded one had (a resumed run's): a checkpoint's optimizer.pt is the same file under either
  strategy, so a DDP checkpoint resumes under FSDP and back.
- Checkpoints are written whole: every worker joins the gather, rank 0 writes.
- Validation embeds with a whole copy of the model (kept on the CPU between validations): rank 0 validates alone
  on a streamed set, and a sharded forward on one rank would wait for the others forever.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from pipeline.models import memory


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_objective(objective: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2 over the objective's towers, in place. -> the objective (its `.model` now sharded)."""
    import warnings

    from torch.distributed.fsdp import fully_shard

    # A tower's output may be a view (ResNet's flatten); FSDP2 warns that an in-place op on it would skip its
    # hook. Only out-of-place ops (the projection, normalize) follow it here.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    objective.to(device)
    model = objective.model
    for tower in (model.image_tower, model.text_tower):
        for unit in memory.shard_units(tower):
            fully_shard(unit)
        fully_shard(tower)
    fully_shard(model)
    objective.sharded = True
    return objective


def move_optimizer(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    """`old`'s state (over the unsharded parameters, a resumed checkpoint's) into `new`, the same groups over
    the sharded ones: each parameter's state tensors become shards laid out as the parameter is."""
    from torch.distributed.tensor import distribute_tensor

    full = old.state_dict()
    params = [p for g in new.param_groups for p in g["params"]]
    if len(params) != sum(len(g["params"]) for g in full["param_groups"]):
        raise RuntimeError("the sharded optimiser's parameters do not match the unsharded one's")
    state = {}
    for i, s in full["state"].items():
        p = params[i]
        state[i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                    if is_sharded(p) and torch.is_tensor(v) and v.shape == p.shape else v for k, v in s.items()}
    new.load_state_dict({"state": state, "param_groups": full["param_groups"]})


def full_model_state(model: nn.Module, everyone: bool = False) -> dict:
    """The whole state dict of a sharded model: on the CPU on rank 0 (empty elsewhere), or with `everyone` on
    every rank, on its device. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everyone))


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    """`opt.state_dict()` with every sharded tensor gathered whole, on the CPU: the file DDP would write.
    Collective: every rank gathers the same tensors in the same order."""
    sd = opt.state_dict()
    state = {i: {k: (v.full_tensor() if is_sharded(v) else v).cpu() if torch.is_tensor(v) else v
                 for k, v in s.items()} for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def whole_states(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """`write_checkpoint`'s `model_state` and `optimizer_state` for a sharded model, gathered whole (every rank
    calls it; rank 0 writes)."""
    return {"model_state": full_model_state(model), "optimizer_state": full_optimizer_state(opt)}


class ValidationCopy:
    """A whole copy of the model, made before sharding, that validation embeds with: `refresh` loads the sharded
    model's current weights into it (collective: every rank calls it at the same step) and returns it. Only the
    ranks that validate keep a copy (`keep`: rank 0 of a streamed set, every rank of a set split in memory);
    the others join the gather and get None."""

    def __init__(self, model: nn.Module, keep: bool, everyone: bool):
        self.everyone = everyone  # every rank validates (its slice of the set): every rank gets the weights
        self.copy = copy.deepcopy(model).cpu() if keep else None
        for m in self.copy.modules() if keep else ():  # a compiled tower's copy would call the original's forward
            m._compiled_call_impl = None

    def refresh(self, sharded: nn.Module, device: torch.device) -> nn.Module | None:
        state = full_model_state(sharded, everyone=self.everyone)
        if self.copy is None:
            return None
        self.copy.load_state_dict(state)
        return self.copy.to(device)

    def park(self) -> None:
        """Back to the CPU until the next validation: the device's memory is the sharded model's."""
        if self.copy is not None:
            self.copy.cpu()


def grad_norm(params: list[nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients of sharded and whole parameters together (every rank holds its shard
    of the first, all of the second). Collective."""
    grads = [p.grad for p in params if p.grad is not None]
    local = [g.to_local() for g in grads if is_sharded(g)]
    whole = [g for g in grads if not is_sharded(g)]
    dev = (local or whole)[0].device if (local or whole) else torch.device("cpu")
    shards = torch.stack([g.float().pow(2).sum() for g in local]).sum() if local else torch.zeros((), device=dev)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(shards)
    rest = torch.stack([g.float().pow(2).sum() for g in whole]).sum() if whole else torch.zeros((), device=dev)
    return (shards + rest.to(shards.device)).sqrt()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """`nn.utils.clip_grad_norm_` over sharded and whole parameters together. -> the norm before clipping."""
    norm = grad_norm(params)
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params:
        if p.grad is not None:
            (p.grad.to_local() if is_sharded(p.grad) else p.grad).mul_(coef.to(p.grad.device))
    return norm
