"""Convert MiniMind checkpoints to and from other layouts and engines (the logic is in inference/convert.py).

  export-llama SRC_DIR DST_DIR             dense MiniMind folder -> transformers LlamaForCausalLM folder
  export-qwen3 SRC_DIR DST_DIR             qk-norm MiniMind folder -> Qwen3ForCausalLM (MoE: Qwen3MoeForCausalLM)
  export-gguf SRC_DIR DST.gguf             MiniMind folder -> one GGUF file for llama.cpp + an ollama Modelfile
  merge-lora BASE_DIR ADAPTER_DIR DST_DIR  fold a peft LoRA adapter into its base -> full MiniMind folder
  import-minimind2 FILE.pth DST_DIR        MiniMind2 .pth state dict -> MiniMind folder
  import-minimind3 FILE.pth DST_DIR        MiniMind-3 .pth state dict (dense or MoE) -> MiniMind folder
"""
import argparse
import sys
from pathlib import Path

from inference.convert import (GGUF_OUTTYPES, ConvertError, export_gguf, export_llama, export_qwen3, import_minimind2,
                               import_minimind3, merge_lora)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export-llama", help="write a dense MiniMind folder as a LlamaForCausalLM folder")
    p.add_argument("src", type=Path, help="MiniMind HF folder (e.g. out/full_sft_512)")
    p.add_argument("dst", type=Path, help="output folder")
    p = sub.add_parser("export-qwen3", help="write a qk-norm MiniMind folder as a Qwen3ForCausalLM / Qwen3MoeForCausalLM folder")
    p.add_argument("src", type=Path, help="MiniMind HF folder trained with --qk_norm (e.g. --config minimind3)")
    p.add_argument("dst", type=Path, help="output folder")
    p = sub.add_parser("export-gguf", help="write a MiniMind folder as a GGUF file (llama.cpp, ollama) with a Modelfile")
    p.add_argument("src", type=Path, help="MiniMind HF folder: dense (GGUF architecture llama, or qwen3 with "
                                          "qk-norm) or MiniMind-3-style MoE (qwen3moe)")
    p.add_argument("dst", type=Path, help="output .gguf file; the ollama Modelfile is written beside it as <name>.Modelfile")
    p.add_argument("--outtype", default="f16", choices=GGUF_OUTTYPES,
                   help="weight matrices in f32, f16 or 8-bit q8_0 (norms stay f32); default f16")
    p = sub.add_parser("merge-lora", help="merge a peft LoRA adapter into its base model")
    p.add_argument("base", type=Path, help="base MiniMind folder the adapter was trained on")
    p.add_argument("adapter", type=Path, help="adapter folder (e.g. out/lora/lora_identity_512)")
    p.add_argument("dst", type=Path, help="output folder for the merged full model")
    p = sub.add_parser("import-minimind2", help="convert a MiniMind2 .pth state dict to a MiniMind HF folder")
    p.add_argument("pth", type=Path, help="MiniMind2 checkpoint, e.g. full_sft_512.pth")
    p.add_argument("dst", type=Path, help="output folder")
    p.add_argument("--dim", type=int, help="model width (default: read from the checkpoint)")
    p.add_argument("--n_layers", type=int, help="number of blocks (default: read from the checkpoint)")
    p.add_argument("--n_heads", type=int, default=8, help="query heads (not recoverable from shapes; default 8)")
    p.add_argument("--n_kv_heads", type=int, help="key/value heads (default: from the wk shape)")
    p.add_argument("--use_moe", action="store_true", default=None, help="expect a mixture-of-experts checkpoint")
    p.add_argument("--num_experts_per_tok", type=int, default=2, help="experts per token for MoE (default 2)")
    p.add_argument("--rope_theta", type=float, default=1e6, help="RoPE base of the checkpoint (default 1e6)")
    p.add_argument("--max_seq_len", type=int, default=32768, help="max_position_embeddings to record")
    p = sub.add_parser("import-minimind3", help="convert a MiniMind-3 .pth state dict (dense or MoE) to a MiniMind HF folder")
    p.add_argument("pth", type=Path, help="MiniMind-3 checkpoint, e.g. full_sft_768.pth; shapes, heads and experts are "
                                          "read from it. A tokenizer.json beside it is copied, else the project's")
    p.add_argument("dst", type=Path, help="output folder")
    p.add_argument("--num_experts_per_tok", type=int, default=1, help="experts per token for MoE (MiniMind-3: 1)")
    p.add_argument("--rope_theta", type=float, default=1e6, help="RoPE base of the checkpoint (MiniMind-3: 1e6)")
    p.add_argument("--rms_norm_eps", type=float, default=1e-6, help="RMSNorm epsilon of the checkpoint (MiniMind-3: 1e-6)")
    p.add_argument("--max_seq_len", type=int, default=32768, help="max_position_embeddings to record")
    args = parser.parse_args(argv)
    try:
        if args.command == "export-llama":
            out = export_llama(args.src, args.dst)
        elif args.command == "export-qwen3":
            out = export_qwen3(args.src, args.dst)
        elif args.command == "export-gguf":
            from tqdm import tqdm
            out = export_gguf(args.src, args.dst, args.outtype, progress=lambda it: tqdm(list(it), desc="tensors", unit="t"))
            print(f"wrote {out.with_suffix('.Modelfile')} (ollama create NAME -f {out.with_suffix('.Modelfile')})")
        elif args.command == "merge-lora":
            out = merge_lora(args.base, args.adapter, args.dst)
        elif args.command == "import-minimind2":
            out = import_minimind2(args.pth, args.dst, args.dim, args.n_layers, args.n_heads, args.n_kv_heads,
                                   args.use_moe, None, args.num_experts_per_tok, args.rope_theta, args.max_seq_len)
        else:
            out = import_minimind3(args.pth, args.dst, args.num_experts_per_tok, args.rope_theta, args.rms_norm_eps,
                                   args.max_seq_len)
    except (ConvertError, FileNotFoundError, OSError) as e:
        sys.exit(f"convert_model: error: {e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
