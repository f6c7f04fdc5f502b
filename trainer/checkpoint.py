"""Checkpoint I/O: resumable training checkpoints and final Hugging Face folders.

A training checkpoint is a folder `step_000123/` with
  model.safetensors     the model's state (shared/tied tensors handled by safetensors)
  trainer_state.pt      optimizer, grad scaler, RNG states (tensors and plain Python values only)
  progress.json         step, epoch, position in the epoch, the run's arguments
It is written under a temporary name and renamed into place, and `latest` (rewritten atomically) names the
newest complete one, so a kill at any moment leaves the previous checkpoint intact.
Everything is read back without unpickling code: safetensors, `torch.load(weights_only=True)`, JSON.
"""
import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

KEEP = 2  # complete checkpoints kept on disk


def _fsync_dir(path: Path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: Path, model, optimizer, scaler, progress: dict) -> Path:
    """Write checkpoint `step_<n>` atomically and prune old ones. `progress` must hold an int 'step'."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{progress['step']:07d}"
    tmp = ckpt_dir / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "rng": rng_state()}, tmp / "trainer_state.pt")
    (tmp / "progress.json").write_text(json.dumps(progress, indent=1, default=str), encoding="utf-8")
    return publish(tmp, final, ckpt_dir)


def publish(tmp: Path, final: Path, ckpt_dir: Path) -> Path:
    """Make the complete checkpoint folder `tmp` durable, rename it to `final`, point `latest` at it and prune."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    _write_atomic(ckpt_dir / "latest", final.name)
    for old in sorted(ckpt_dir.glob("step_*[0-9]"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    pointer = ckpt_dir / "latest"
    if pointer.exists():
        path = ckpt_dir / pointer.read_text(encoding="utf-8").strip()
        if (path / "progress.json").exists():
            return path
    complete = [p for p in sorted(ckpt_dir.glob("step_*[0-9]")) if (p / "progress.json").exists()]
    return complete[-1] if complete else None


def load_checkpoint(path: Path, model, optimizer, scaler) -> dict:
    """Restore model, optimizer, scaler and RNG from `path`; return its progress dict."""
    if (path / "sharded").is_dir():
        raise ValueError(f"{path} is a sharded checkpoint written with --fsdp: resume with --fsdp under torchrun")
    load_model(model, str(path / "model.safetensors"))
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return json.loads((path / "progress.json").read_text(encoding="utf-8"))


def save_final(model, tokenizer, out: Path):
    """The stage's result as a self-contained HF folder (safetensors + config + tokenizer), replaced atomically."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
