"""Loading a trained model for use: device and precision choice, the tokenizer that goes with a folder, an
optional LoRA adapter merged in. `load()` is the one lookup + load every command calls."""
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from model import TOKENIZER_DIR  # importing `model` also registers MiniMind with the Auto classes

from .checkpoints import ModelNotFound, resolve_lora_path, resolve_model_path


def quiet_libraries():
    """For the command-line front ends: no progress bars, library warnings or deprecation notices."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for module in ("transformers", "peft", "torch"):
        warnings.filterwarnings("ignore", module=module)


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ModelNotFound(f"unknown --device {name!r} (cpu, cuda, cuda:N, mps or auto)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelNotFound(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def has_tokenizer(folder) -> bool:
    folder = Path(folder)
    return (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists()


def load_tokenizer(path=None):
    """The tokenizer in `path`, or the project's own (model/) when no path is given."""
    path = Path(path) if path else TOKENIZER_DIR
    if not has_tokenizer(path):
        raise ModelNotFound(f"no tokenizer in {path} (expected tokenizer.json; the project's own is in model/)")
    return AutoTokenizer.from_pretrained(path)


def tokenizer_for(model_dir):
    """A model folder's own tokenizer when it has one, else the project's tokenizer in model/."""
    return load_tokenizer(model_dir if has_tokenizer(model_dir) else None)


def load_model(path, lora_path=None, device="cpu", dtype=torch.float32):
    """(model in eval mode on `device`, tokenizer). A LoRA adapter is merged into the weights for fast inference."""
    path = Path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotFound(f"cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if lora_path is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, Path(lora_path)).merge_and_unload()
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFound(f"LoRA adapter {lora_path} does not fit {path}: {first}") from None
    return model.to(device).eval(), tokenizer_for(path)


def describe(model, path, lora_path=None) -> str:
    params = sum(p.numel() for p in model.parameters()) / 1e6
    c = model.config
    lora = f" + LoRA {lora_path}" if lora_path else ""
    return (f"loaded {path}{lora}: {params:.2f}M parameters, {c.num_hidden_layers} layers, hidden size "
            f"{c.hidden_size}, on {model.device} ({str(model.dtype).removeprefix('torch.')})")


def load(model_path=None, model_mode: int = 1, lora_name=None, out_dir="out", dim: int = 512, use_moe: bool = False,
         device="auto", dtype="auto"):
    """Find a model the way the commands' flags name it (--model_path, or --model_mode/--dim/--use_moe under
    --out_dir, plus --lora_name) and load it: (model, tokenizer, path, adapter path or None)."""
    path = resolve_model_path(model_path, model_mode, out_dir, dim, use_moe)
    lora = resolve_lora_path(lora_name, out_dir, dim, use_moe)
    device = pick_device(device) if isinstance(device, str) else device
    model, tokenizer = load_model(path, lora, device, pick_dtype(dtype, device) if isinstance(dtype, str) else dtype)
    return model, tokenizer, path, lora
