"""Print the parameter count and shape of each preset in configs/ (or of the given config files)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from configs import PRESETS, load_config, model_kwargs  # noqa: E402
from model import MiniMindConfig, MiniMindForCausalLM  # noqa: E402


def count_parameters(config: MiniMindConfig) -> int:
    """Unique parameters (the tied embedding / LM head counted once), built on the meta device: no memory."""
    with torch.device("meta"):
        return MiniMindForCausalLM(config).num_parameters()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="*", default=list(PRESETS), help="preset names or yaml paths (default: all presets)")
    args = parser.parse_args(argv)
    width = max(8, *(len(Path(name).stem) for name in args.configs))
    print(f"{'preset':<{width}} {'dim':>5} {'layers':>6} {'heads':>8} {'ffn':>5} {'moe':>9} {'params':>12}")
    for name in args.configs:
        config = MiniMindConfig(**model_kwargs(load_config(name)))
        moe = f"{config.n_routed_experts}x top{config.num_experts_per_tok}" if config.use_moe else "-"
        heads = f"{config.num_attention_heads}/{config.num_key_value_heads}{' qk' if config.qk_norm else ''}"
        print(f"{Path(name).stem:<{width}} {config.hidden_size:>5} {config.num_hidden_layers:>6} {heads:>8} "
              f"{config.intermediate_size:>5} {moe:>9} {count_parameters(config) / 1e6:>11.2f}M")


if __name__ == "__main__":
    main()
