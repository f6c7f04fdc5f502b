"""`from model import MiniMindConfig, MiniMindForCausalLM`; importing registers both with the Auto classes,
so `AutoModelForCausalLM.from_pretrained(local_dir)` loads MiniMind folders without trust_remote_code."""
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_minimind import MiniMindConfig
from .modeling_minimind import MiniMindForCausalLM, MiniMindModel

TOKENIZER_DIR = Path(__file__).resolve().parent  # the project's tokenizer files live beside the model code



def is_minimind(model) -> bool:
    """Whether `model` is a MiniMind model, also under torch.compile or a PEFT wrapper (rather than a Llama / Qwen3
    export loaded by transformers): only ours fills the inference engine's cache and takes `logits_positions`."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return isinstance(base, MiniMindForCausalLM)


AutoConfig.register(MiniMindConfig.model_type, MiniMindConfig, exist_ok=True)
AutoModelForCausalLM.register(MiniMindConfig, MiniMindForCausalLM, exist_ok=True)

__all__ = ["MiniMindConfig", "MiniMindForCausalLM", "MiniMindModel", "TOKENIZER_DIR", "is_minimind"]
