"""Presets: `configs/<name>.yaml` files of flag-name → value (see small.yaml); flags on the command line win."""
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent
PRESETS = ("tiny", "small", "base", "moe", "minimind3", "minimind3_moe")


def load_config(name_or_path, directory: Path = CONFIG_DIR, names: tuple = PRESETS) -> dict:
    """Read a preset by name ('small') or a yaml file by path; raise ValueError naming the file on bad content."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = directory / f"{name_or_path}.yaml"
    if not path.exists():
        raise ValueError(f"{path} not found (known names: {', '.join(names)})")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values, got {type(values).__name__}")
    return values


RECIPE_DIR = CONFIG_DIR / "recipes"
RECIPES = ("fast",)


def load_recipe(name_or_path) -> dict[str, dict]:
    """A training recipe (`configs/recipes/<name>.yaml`): lever name → {flag name: value}. Each lever is one idea
    (an optimizer, a schedule, an initialisation) that `scripts/time_to_loss.py` can remove on its own."""
    levers = load_config(name_or_path, RECIPE_DIR, RECIPES)
    bad = [k for k, v in levers.items() if not isinstance(v, dict)]
    if bad:
        raise ValueError(f"recipe {name_or_path}: each top-level key is a lever holding flag: value pairs; {bad} are not")
    flags = [f for lever in levers.values() for f in lever]
    twice = sorted({f for f in flags if flags.count(f) > 1})
    if twice:  # removing one lever in an ablation must remove its flags
        raise ValueError(f"recipe {name_or_path}: flags set by more than one lever: {twice}")
    return levers


def recipe_flags(levers: dict[str, dict]) -> dict:
    """The flag values of all of a recipe's levers together."""
    return {flag: value for lever in levers.values() for flag, value in lever.items()}


def model_kwargs(values: dict) -> dict:
    """MiniMindConfig keyword arguments from flag-style values (dim, n_layers, ..., qk_norm, use_moe, ...)."""
    return {MODEL_FLAGS[k]: v for k, v in values.items() if k in MODEL_FLAGS and v is not None}


# flag name -> MiniMindConfig field, for the flags that shape a model built from scratch
MODEL_FLAGS = {
    "dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads", "intermediate_size": "intermediate_size", "dropout": "dropout",
    "vocab_size": "vocab_size", "rope_theta": "rope_theta", "rms_norm_eps": "rms_norm_eps", "qk_norm": "qk_norm",
    "use_moe": "use_moe", "n_routed_experts": "n_routed_experts", "num_experts_per_tok": "num_experts_per_tok",
    "n_shared_experts": "n_shared_experts", "aux_loss_alpha": "aux_loss_alpha", "seq_aux": "seq_aux",
}


def count_parameters(config) -> int:
    """Unique parameters of a MiniMindConfig (the tied embedding / LM head counted once), built on the meta device:
    no memory."""
    import torch

    from model import MiniMindForCausalLM

    with torch.device("meta"):
        return MiniMindForCausalLM(config).num_parameters()
