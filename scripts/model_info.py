"""Print the parameter count and shape of each preset in configs/ (or of the given config files)."""
import argparse
from pathlib import Path

from configs import PRESETS, count_parameters, load_config, model_kwargs
from model import MiniMindConfig


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
