"""`--fsdp`: PyTorch's FSDP2 (`fully_shard`) instead of DDP under torchrun, and the sharded checkpoints it needs.

DDP keeps a full copy of the weights, gradients and AdamW state on every process; FSDP2 keeps 1/world_size of each
and all-gathers one block's weights just before that block runs (reduce-scattering its gradients after). Every
transformer block is its own unit; the embedding (tied to the LM head) and the final norm are the root's unit.
Frozen models (DPO's and GRPO's reference, the distillation teacher) are not sharded: they run no backward and
hold no optimizer state, so a full copy on each process costs only their weights.

A sharded training checkpoint is a folder `step_000123/` with
  sharded/              model and optimizer state, one file per rank (torch.distributed.checkpoint), loadable
                        with another number of processes
  rng_rank<R>.pt        each rank's RNG states
  trainer_state.pt      the grad scaler (rank 0)
  progress.json         as in trainer/checkpoint.py, so `latest_checkpoint` finds it
written under a temporary name and published like the single-file ones. With several nodes, --out_dir must be on a
file system that every node sees. The stage's final model is gathered to rank 0 and saved as a normal HF folder.
"""
import json
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from model.modeling_minimind import Block
from .checkpoint import publish, rng_state, set_rng_state
from .modelio import StageError


def check(args, info) -> bool:
    """Whether this run shards; explains the flags that do not go with --fsdp."""
    if not args.fsdp:
        return False
    if args.optimizer == "muon":
        raise StageError("--fsdp with --optimizer muon is not supported: Muon orthogonalises whole weight matrices, "
                         "which FSDP splits across processes; use --optimizer adamw, or DDP (no --fsdp)")
    if not info.enabled:
        if info.is_main:
            print("note: --fsdp with one process has nothing to shard; training as without it", flush=True)
        return False
    return True


def shard(model):
    """Shard `model` in place: each Block, then the rest (embedding/LM head, final norm) at the root."""
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module)
    fully_shard(model)
    return model


def accumulate_only(model, accumulate: bool):
    """Context for one micro-batch: with accumulate=True its gradients stay local and are summed into the next
    micro-batch's; the step's last micro-batch (accumulate=False) syncs them across processes.
    DDP: no_sync(); FSDP2: set_requires_gradient_sync."""
    plain = getattr(model, "_orig_mod", model)  # under torch.compile
    if isinstance(plain, FSDPModule):
        plain.set_requires_gradient_sync(not accumulate)
        return nullcontext()
    return model.no_sync() if accumulate else nullcontext()


def local(value):
    """A DTensor result (e.g. the gradient norm of sharded gradients) as a plain, replicated tensor."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def _torch_optimizers(optimizer):
    return list(optimizer.optimizers.values())


def save_checkpoint(ckpt_dir: Path, model, optimizer, scaler, progress: dict, info) -> Path:
    """Collective: every rank writes its shards; rank 0 then publishes the folder (see the module docstring)."""
    final = ckpt_dir / f"step_{progress['step']:07d}"
    tmp = ckpt_dir / (final.name + ".tmp")
    if info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    model_state, optim_state = get_state_dict(model, _torch_optimizers(optimizer))
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / "sharded")
    torch.save({"rng": rng_state()}, tmp / f"rng_rank{info.rank}.pt")
    if info.is_main:
        torch.save({"scaler": scaler.state_dict() if scaler else None}, tmp / "trainer_state.pt")
        (tmp / "progress.json").write_text(json.dumps(progress, indent=1, default=str), encoding="utf-8")
    dist.barrier()
    if info.is_main:
        publish(tmp, final, ckpt_dir)
    dist.barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, scaler, info) -> dict:
    """Collective: restore the sharded model and optimizer (any number of processes), scaler and RNG."""
    if not (path / "sharded").is_dir():
        raise ValueError(f"{path} was written without --fsdp: resume it without --fsdp (or start a new run)")
    optimizers = _torch_optimizers(optimizer)
    # get_state_dict gives the sharded layout to load into (it creates AdamW's state with a zero-gradient step)
    model_state, optim_state = get_state_dict(model, optimizers)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=path / "sharded")
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    trainer_state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    if scaler is not None and trainer_state["scaler"]:
        scaler.load_state_dict(trainer_state["scaler"])
    rng_file = path / f"rng_rank{info.rank}.pt"
    if not rng_file.exists():  # resumed with more processes than wrote it
        rng_file = path / "rng_rank0.pt"
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True)["rng"])
    return json.loads((path / "progress.json").read_text(encoding="utf-8"))


def gather_full_model(model, build_plain):
    """Collective: the trained weights as one unsharded model on rank 0 (`build_plain()` makes an unsharded model
    of the same structure, e.g. the stage's starting model); None on the other ranks."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    plain = build_plain()
    plain.load_state_dict(state)
    return plain
