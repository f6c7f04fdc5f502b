"""Command-line pieces the front ends share (eval_model.py, the server, the evaluation commands): the help
layout, boolean flags, and the model-selection and sampling flag groups."""
import argparse

from .checkpoints import model_modes, modes_help


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the description's layout and shows each flag's default (not "None"/"False": the help says it)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def str2bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "y", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def add_model_arguments(parser: argparse.ArgumentParser, multiple_paths: bool = False):
    """The model-selection flags both front ends accept."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_path", action="append" if multiple_paths else "store", default=None, metavar="DIR",
                   help="a Hugging Face model folder (MiniMind or Llama layout); overrides the --model_mode lookup"
                        + (" (repeat to serve several models; each one's id is its folder name)" if multiple_paths else ""))
    g.add_argument("--model_mode", type=int, default=1, choices=sorted(model_modes()),
                   help="which trained stage to load from OUT_DIR/<stage>_<dim>[_moe]: " + modes_help())
    g.add_argument("--lora_name", default=None,
                   help="peft LoRA adapter applied on top of the model: a name resolved to OUT_DIR/lora/<name>_<dim>[_moe] "
                        "(e.g. lora_identity, lora_medical) or an adapter folder")
    g.add_argument("--out_dir", default="out", help="where the training scripts wrote their model folders")
    g.add_argument("--dim", type=int, default=512, help="model width; part of the folder name (out/full_sft_512)")
    g.add_argument("--n_layers", type=int, default=None,
                   help="expected number of layers (the folder's config.json is authoritative; a mismatch is reported)")
    g.add_argument("--use_moe", type=str2bool, nargs="?", const=True, default=False,
                   help="look for the mixture-of-experts folders (<stage>_<dim>_moe)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (CUDA, then MPS, then CPU)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight precision: auto = bfloat16 on CUDA (float16 if unsupported), float32 elsewhere")
    return g


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 512):
    g = parser.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.85, help="sampling temperature; 0 = greedy decoding")
    g.add_argument("--top_p", type=float, default=0.85, help="nucleus sampling: keep the smallest token set with this much probability")
    g.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help="upper limit on generated tokens per answer")
    g.add_argument("--repetition_penalty", type=float, default=1.0, help=">1 discourages repeating tokens (1 = off)")
    return g
