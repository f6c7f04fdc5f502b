"""Throughput benchmark: MiniMind against transformers' LlamaForCausalLM of the same shape.

Measures, for one preset/shape, device, dtype and thread count:
  peak        the machine's own matmul rate (n x n fp32 / bf16 matmuls), so every rate below is also a share of it
  train       training-step tokens/s (forward + backward + grad clip + AdamW on random tokens; median of the
              timed steps, warm-up excluded), ours and the baseline in the same process, steps interleaved;
              achieved FLOP/s as a share of the measured matmul peak (and, on CUDA, MFU against the card's
              nominal dense bf16 peak); peak memory of a steady-state step
  generation  KV-cached greedy decoding tokens/s at batch 1 and 8 (new tokens only), ours vs the baseline
  rollout     (--rollout) RL rollouts: 4 prompts x G sampled completions, inference/engine.py vs HF generate()
              on our model, new tokens/s side by side at G = 4/8/16 for the demo and small presets, same precision
  grpo memory (--grpo_memory) peak memory of one GRPO step (rollout + loss + update) against G
  packing     useful-token throughput on real jsonl files, packed rows vs one padded sample per row (MiniMind's
              layout): real (non-padding) and loss-bearing tokens/s, against the ceiling = unpacked positions/s
  loss curve  (--loss_curve N) fp32 vs bf16-autocast pretraining from the same init and data order
  checkpointing (--grad_ckpt) peak step memory and step time with and without activation checkpointing, by
              default on the base preset at seq 1024 (RSS on CPU, max_memory_allocated on CUDA)
  attention   (--attention) attention forward + backward (SDPA, causal, the preset's heads) at 128-768 positions
              per row (4,096 positions per batch) in bf16 and in fp32: where the model attends in fp32 while training
              under bf16 autocast on a CPU, this is the measurement behind it
  loss head   (--loss_head) the LM head + cross entropy forward + backward at 4,096 labelled positions: the logits
              path (vocab-wide logits, then the loss) vs the training stages' fused, chunked head and loss
              (trainer/losses.py linear_cross_entropy), in fp32 and under bf16 autocast
  rollout loss (--rollout_loss) GRPO's loss on one rollout batch shaped like the agent stage's (4 prompts of a
              tools block, ~450 tokens, G replies of 40-140 tokens): policy forward + backward and the reference
              forward, the G padded rows vs each prompt once with its replies as branches (GRPO.model_inputs)
  server      (--server) the OpenAI-compatible server (scripts/serve_openai_api.py's, a random model of each
              preset): new tokens/s of 1, 4 and 16 streaming clients at once against the same requests sent one
              after another, in the same run; the server decodes concurrent requests in one batch

FLOPs per trained token = 6·N + 12·L·T·d, with N the parameters that take part in a matmul (every Linear,
the tied LM head counted once; the embedding lookup and the norms are left out), L layers, T the sequence
length and d = heads·head_dim: the attention scores and the weighted sum cost 2·2·T·d per layer forward,
x3 for forward + backward, with no discount for the causal mask.

Examples:
    python scripts/bench.py                       # small preset, CPU, 2 threads, fp32 and bf16, table
    python scripts/bench.py --json > bench.json   # the same as one JSON object on stdout
    python scripts/bench.py --quick               # tiny shape, 2 steps: a smoke run
    python scripts/bench.py --device cuda --dtype bfloat16
    python scripts/bench.py --loss_curve 300      # fp32 vs bf16 loss curves on the kit's pretrain.jsonl
    python scripts/bench.py --grad_ckpt           # activation checkpointing: memory saved, time it costs
    python scripts/bench.py --rollout --skip peak,train,generation,packing --dtype float32   # rollouts only
    python scripts/bench.py --grpo_memory --rollout_configs demo --rollout_groups 2,4,8 --skip peak,train,generation,packing
    python scripts/bench.py --attention --config demo   # attention in bf16 vs fp32, per row length
    python scripts/bench.py --loss_head --config demo   # LM head + loss: logits path vs fused
    python scripts/bench.py --rollout_loss --config demo   # GRPO loss: padded rows vs a shared prompt
    python scripts/bench.py --server demo,small   # server throughput, concurrent vs sequential clients
    python scripts/bench.py --agent_memory        # agentic RL: peak step memory against --max_tool_turns 1/2/4
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from inference.loading import load_tokenizer
from trainer.precision import native_bf16

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_KIT = ROOT.parent / "shared" / "data"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Nominal dense (no sparsity) bf16 tensor-core peaks, FLOP/s, matched against torch.cuda.get_device_name().
CUDA_BF16_SPEC = [("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("GH200", 989.4e12),
                  ("B200", 2250e12), ("A100", 312e12), ("A10G", 70e12), ("L40S", 362e12), ("L4", 121e12)]


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# arguments and shapes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", default=None, help="preset name in configs/ or a yaml path (default: small; base with --grad_ckpt)")
    p.add_argument("--seq_len", type=int, default=None, help="default 256; 1024 with --grad_ckpt")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "both"],
                   help="default: both where bf16 is supported (CPU with bf16 matmuls, CUDA), else float32")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per model")
    p.add_argument("--peak_size", type=int, default=None, help="n of the n x n peak matmul (default 2048 CPU, 8192 CUDA)")
    p.add_argument("--gen_tokens", type=int, default=128, help="new tokens per generate call")
    p.add_argument("--gen_batches", default="1,8", help="comma-separated generation batch sizes")
    p.add_argument("--gen_prompt", type=int, default=16, help="prompt length for generation")
    p.add_argument("--gen_reps", type=int, default=3, help="generate calls per model and batch (median reported)")
    p.add_argument("--rollout", action="store_true",
                   help="also benchmark RL rollouts: the generation engine vs generate() (off by default: minutes)")
    p.add_argument("--rollout_configs", default="demo,small", help="comma-separated presets for --rollout")
    p.add_argument("--rollout_groups", default="4,8,16", help="comma-separated group sizes G for --rollout")
    p.add_argument("--rollout_prompts", type=int, default=4, help="distinct prompts per rollout batch")
    p.add_argument("--rollout_tokens", type=int, default=64, help="new tokens per completion in --rollout")
    p.add_argument("--rollout_reps", type=int, default=3, help="timed rollouts per method and G (median reported)")
    p.add_argument("--grpo_memory", action="store_true",
                   help="peak memory of one GRPO step per G of --rollout_groups (first preset of --rollout_configs)")
    p.add_argument("--sft_data", default=str(DEFAULT_KIT / "sft.jsonl"),
                   help="SFT jsonl for the packing figures (default ../shared/data/sft.jsonl; skipped if absent)")
    p.add_argument("--pack_files", nargs="*", default=None,
                   help="packing runs as [kind:]FILE@LEN; FILE a path or a kit name (sft, reason, pretrain); kind "
                        "pretrain or sft, guessed from the name (default: the --sft_data file @512)")
    p.add_argument("--pack_batches", type=int, default=8, help="timed batches per packing run (after --pack_warmup)")
    p.add_argument("--pack_warmup", type=int, default=2)
    p.add_argument("--pack_dtype", default=None, choices=["float32", "bfloat16"],
                   help="precision of the packing runs (default: bfloat16 when benchmarked, else float32)")
    p.add_argument("--cache_dir", default=None, help="datasets cache for the tokenized jsonl (default: datasets' own)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: peak, train, memory, generation, packing")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile both models for the training steps (with --server: the served model)")
    p.add_argument("--fused_adam", action="store_true",
                   help="AdamW(fused=True) for both models (default: torch's default, a per-tensor loop on CPU)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny preset, seq 32, batch 2, 2 steps, 8 new tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss_curve", type=int, nargs="?", const=300, default=None, metavar="STEPS",
                   help="only train the preset on --pretrain_data in fp32 and bf16 from the same init and data order "
                        "for STEPS steps (default 300) and report the largest relative gap of the smoothed losses")
    p.add_argument("--grad_ckpt", action="store_true",
                   help="only measure activation checkpointing: peak step memory and median step time (--steps) "
                        "without and with it, on --config (default base) at --seq_len (default 1024), in --dtype "
                        "(default bfloat16 where native, else float32)")
    p.add_argument("--attention", action="store_true",
                   help="only time attention forward + backward in bf16 and fp32 at 128, 256, 512 and 768 positions "
                        "per row, 4,096 positions per batch, the --config preset's heads (median of --steps)")
    p.add_argument("--loss_head", action="store_true",
                   help="only time the LM head + cross entropy forward + backward at 4,096 labelled positions "
                        "(the --config preset's width and vocab): logits path vs the fused, chunked one, fp32 and "
                        "bf16 autocast (median of --steps)")
    p.add_argument("--rollout_loss", action="store_true",
                   help="only time GRPO's loss (policy forward + backward, reference forward) on an agent-shaped "
                        "rollout (4 prompts of ~450 tokens, --rollout_groups G replies of 40-140 tokens): padded rows "
                        "vs one row per prompt with its replies as branches (median of --steps)")
    p.add_argument("--server", nargs="?", const="demo", default=None, metavar="PRESETS",
                   help="only measure the HTTP server: comma-separated presets (default demo), each a random model "
                        "served on a free port; --server_clients streaming clients at once vs the same requests one "
                        "after another (fp32, --threads torch threads)")
    p.add_argument("--server_clients", default="1,4,16", help="comma-separated numbers of concurrent clients")
    p.add_argument("--server_tokens", type=int, default=64, help="new tokens per request (greedy, min = max)")
    p.add_argument("--server_reps", type=int, default=2, help="repetitions of each measurement (median reported)")
    p.add_argument("--agent_memory", nargs="?", const="demo", default=None, metavar="PRESET",
                   help="only measure an agent-RL training step (train_agent.py: 4 tasks x 8 trajectories, replies of "
                        "48 tokens that always call a tool) on PRESET (default demo): peak memory and time against "
                        "--max_tool_turns 1, 2 and 4")
    p.add_argument("--pretrain_data", default=str(DEFAULT_KIT / "pretrain.jsonl"))
    p.add_argument("--smooth", type=int, default=20, help="moving-average window of the loss curves")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the loss-curve runs (cosine to a tenth)")
    args = p.parse_args(argv)
    args.config = args.config or ("base" if args.grad_ckpt else "small")
    args.seq_len = args.seq_len or (1024 if args.grad_ckpt else 256)
    if args.quick:
        args.config, args.seq_len, args.batch_size = "tiny", 32, 2
        args.steps, args.warmup, args.peak_size = 2, 1, args.peak_size or 256
        args.gen_tokens, args.gen_reps, args.gen_prompt = 8, 1, 8
        args.pack_batches, args.pack_warmup = 2, 1
        args.rollout_configs, args.rollout_groups, args.rollout_tokens, args.rollout_reps = "tiny", "2", 8, 1
        args.rollout_prompts = 2
        if args.loss_curve is not None:
            args.loss_curve = min(args.loss_curve, 10)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - {"peak", "train", "memory", "generation", "packing"}
    if unknown:
        p.error(f"--skip: unknown part(s) {sorted(unknown)}")
    args.gen_batches = [int(b) for b in args.gen_batches.split(",") if b]
    args.rollout_configs = [c for c in args.rollout_configs.split(",") if c]
    args.rollout_groups = [int(g) for g in args.rollout_groups.split(",") if g]
    args.server_clients = [int(n) for n in args.server_clients.split(",") if n]
    return args


def model_shape(config_name: str) -> dict:
    from configs import load_config, model_kwargs
    return model_kwargs(load_config(config_name))


def autocast(device: torch.device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------
# models


def build_ours(shape: dict, device):
    from model import MiniMindConfig, MiniMindForCausalLM
    return MiniMindForCausalLM(MiniMindConfig(**shape)).to(device)


def build_baseline(ours_config, device):
    """transformers' Llama with our shape: SDPA attention, tied embeddings, the same RoPE base and norm eps."""
    from transformers import LlamaConfig, LlamaForCausalLM
    c = ours_config
    config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                         rms_norm_eps=c.rms_norm_eps, rope_parameters=dict(c.rope_parameters),
                         tie_word_embeddings=True, initializer_range=c.initializer_range,
                         bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    return model.to(device)


def matmul_params(model) -> int:
    """Parameters that take part in a matmul: every nn.Linear weight, shared (tied) tensors counted once."""
    seen, n = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            n += module.weight.numel()
    return n


def train_flops_per_token(model, seq_len: int) -> float:
    c = model.config
    return 6 * matmul_params(model) + 12 * c.num_hidden_layers * seq_len * c.num_attention_heads * (
        c.hidden_size // c.num_attention_heads)


class Stepper:
    """One model with its AdamW: step(...) = forward, summed token CE / items, backward, clip 1.0, AdamW."""

    def __init__(self, model, lr=1e-4, compile_model=False, fused_adam=False):
        self.model = model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0, fused=fused_adam or None)
        self.forward = torch.compile(model) if compile_model else model

    def step(self, batch, device, dtype):
        from trainer.losses import causal_lm_loss
        with autocast(device, dtype):
            logits = self.forward(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                  position_ids=batch.get("position_ids"), use_cache=False).logits
            loss = causal_lm_loss(logits, batch["labels"]) / max(1, batch["num_items"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def timed(fn, device, cpu_times=None):
    """(wall seconds, result) of fn(); appends the process CPU seconds to cpu_times when given."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    if isinstance(out, torch.Tensor):
        out = out.item()  # the step is done when its loss is known
    sync(device)
    t = time.perf_counter() - t0
    if cpu_times is not None:
        cpu_times.append(time.process_time() - c0)
    return t, out


# ----------------------------------------------------------------------------------------------------------------
# memory


class PeakMemory:
    """Peak memory above the level at entry, in MiB. CPU: process RSS from /proc (VmHWM reset through
    /proc/self/clear_refs after malloc_trim has handed freed heap pages back); CUDA: max_memory_allocated."""

    _libc = None

    def __init__(self, device):
        self.device, self.mib = device, None

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {field} in /proc/self/status")

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            if PeakMemory._libc is None:
                PeakMemory._libc = ctypes.CDLL("libc.so.6")
            PeakMemory._libc.malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the RSS high-water mark to the current RSS
            self.base = self._status("VmRSS")
        except OSError:
            self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        elif self.base is not None:
            self.mib = (self._status("VmHWM") - self.base) / 2**20
        return False


# ----------------------------------------------------------------------------------------------------------------
# peak


def matmul_peak(device, dtype, n: int, min_time=1.0) -> float:
    """FLOP/s of n x n @ n x n matmuls: the best of repeated ~0.1 s timings (a peak, and on a shared machine the
    best window is the one least disturbed by other work)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    a @ b
    sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(0.1 / one))
    rates, t_start = [], time.perf_counter()
    while len(rates) < 3 or (time.perf_counter() - t_start < min_time and len(rates) < 50):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        rates.append(2 * n**3 * inner / (time.perf_counter() - t0))
    return max(rates)


# ----------------------------------------------------------------------------------------------------------------
# training throughput


def random_batch(vocab: int, batch_size: int, seq_len: int, device, generator):
    ids = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=generator)
    return {"input_ids": ids[:, :-1].to(device), "labels": ids[:, 1:].to(device), "attention_mask": None,
            "position_ids": None, "num_items": batch_size * seq_len}


def bench_train(args, shape, device, dtype_name, peaks, memory=True):
    dtype = DTYPES[dtype_name]
    torch.manual_seed(args.seed)
    ours = build_ours(shape, device)
    torch.manual_seed(args.seed)
    base = build_baseline(ours.config, device)
    n_ours, n_base = ours.num_parameters(), base.num_parameters()
    steppers = {"ours": Stepper(ours, compile_model=args.compile, fused_adam=args.fused_adam),
                "baseline": Stepper(base, compile_model=args.compile, fused_adam=args.fused_adam)}
    g = torch.Generator().manual_seed(args.seed)
    batches = [random_batch(ours.config.vocab_size, args.batch_size, args.seq_len, device, g) for _ in range(4)]
    tokens = args.batch_size * args.seq_len
    res = {name: {"params": n} for name, n in (("ours", n_ours), ("baseline", n_base))}

    # warm-up, one model after the other; the last warm-up step (optimizer state already allocated) gives the
    # steady-state step memory
    for name, s in steppers.items():
        first = None
        for i in range(max(args.warmup, 2 if memory else 1)):
            if memory and i == max(args.warmup, 2) - 1:
                with PeakMemory(device) as mem:
                    s.step(batches[i % 4], device, dtype)
                res[name]["step_mem_mib"] = None if mem.mib is None else round(mem.mib, 1)
            else:
                t, _ = timed(lambda: s.step(batches[i % 4], device, dtype), device)
                first = t if first is None else first
        res[name]["first_step_s"] = round(first, 3) if first is not None else None

    # timed steps, interleaved; the order alternates so that neither model always runs right after the other
    times = {name: [] for name in steppers}
    cpu = {name: [] for name in steppers}
    for i in range(args.steps):
        order = ("ours", "baseline") if i % 2 == 0 else ("baseline", "ours")
        for name in order:
            t, loss = timed(lambda: steppers[name].step(batches[i % 4], device, dtype), device, cpu[name])
            times[name].append(t)
            if not math.isfinite(loss):
                raise RuntimeError(f"{name}: non-finite loss {loss} in {dtype_name}")

    peak = peaks.get(dtype_name)
    for name, s in steppers.items():
        model = s.model
        fpt = train_flops_per_token(model, args.seq_len)
        step = statistics.median(times[name])
        r = res[name]
        r.update({"step_ms": round(step * 1e3, 2), "tokens_per_s": round(tokens / step, 1),
                  "step_ms_min": round(min(times[name]) * 1e3, 2), "flops_per_token": fpt,
                  "cpu_ms": round(statistics.median(cpu[name]) * 1e3, 2),
                  "tflops": round(tokens / step * fpt / 1e12, 4)})
        if peak:
            r["share_of_peak"] = round(tokens / step * fpt / peak, 4)
        if device.type == "cuda":
            spec = cuda_bf16_spec(device)
            if spec:
                r["mfu_bf16_spec"] = round(tokens / step * fpt / spec, 4)
    # ours/baseline speed: the median of the per-step ratios (each pair ran back to back under the same load)
    res["ratio"] = round(statistics.median(b / o for o, b in zip(times["ours"], times["baseline"])), 3)
    # the same from process CPU time, which other processes on a shared machine disturb less (CPU only)
    res["ratio_cpu_time"] = round(statistics.median(b / o for o, b in zip(cpu["ours"], cpu["baseline"])), 3) \
        if device.type == "cpu" else None
    res["tokens_per_step"] = tokens
    del steppers, ours, base
    gc.collect()
    return res


def cuda_bf16_spec(device):
    name = torch.cuda.get_device_name(device)
    for key, flops in CUDA_BF16_SPEC:
        if key in name:
            return flops
    return None


# ----------------------------------------------------------------------------------------------------------------
# generation


def bench_generation(args, shape, device, dtype_name):
    """New tokens/s of greedy KV-cached generation. bf16 runs use bf16 weights (no master copy is needed)."""
    dtype = DTYPES[dtype_name]
    torch.manual_seed(args.seed)
    ours = build_ours(shape, device)
    torch.manual_seed(args.seed)
    base = build_baseline(ours.config, device)
    models = {"ours": ours.to(dtype).eval(), "baseline": base.to(dtype).eval()}
    g = torch.Generator().manual_seed(args.seed + 1)
    vocab = ours.config.vocab_size
    out = {}
    for b in args.gen_batches:
        prompt = torch.randint(3, vocab, (b, args.gen_prompt), generator=g).to(device)
        mask = torch.ones_like(prompt)

        def run(model, n):
            with torch.inference_mode():
                y = model.generate(input_ids=prompt, attention_mask=mask, do_sample=False, min_new_tokens=n,
                                   max_new_tokens=n, pad_token_id=0)
            assert y.shape[1] == args.gen_prompt + n, y.shape
            return None

        for model in models.values():  # warm-up
            run(model, min(8, args.gen_tokens))
        times = {name: [] for name in models}
        for i in range(args.gen_reps):
            order = list(models) if i % 2 == 0 else list(models)[::-1]
            for name in order:
                t, _ = timed(lambda: run(models[name], args.gen_tokens), device)
                times[name].append(t)
        r = {name: round(b * args.gen_tokens / statistics.median(t), 1) for name, t in times.items()}
        r["ratio"] = round(statistics.median(tb / to for to, tb in zip(times["ours"], times["baseline"])), 3)
        out[f"b{b}"] = r
    del models, ours, base
    gc.collect()
    return out


# ----------------------------------------------------------------------------------------------------------------
# rollouts


def rollout_prompts(n: int, length: int, vocab: int, generator):
    """n random left-padded prompts of different lengths (length, then shorter by up to a half)."""
    lengths = [max(2, length - i * length // (2 * max(1, n - 1))) for i in range(n)]
    ids = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.long)
    for b, m in enumerate(lengths):
        ids[b, length - m:] = torch.randint(3, vocab, (m,), generator=generator)
        mask[b, length - m:] = 1
    return ids, mask


def bench_rollout(args, preset, device, dtype_name):
    """New tokens/s of sampled rollouts (temperature 1, no top-p/top-k, no end token so every row runs to the
    limit and both methods do the same work): the engine vs generate() on the same model and prompts, runs
    interleaved, per group size G."""
    from inference.engine import generate_batch

    dtype = DTYPES[dtype_name]
    torch.manual_seed(args.seed)
    model = build_ours(model_shape(preset), device).to(dtype).eval()
    model.generation_config.eos_token_id = None  # no row stops early: both methods decode every token
    ids, mask = rollout_prompts(args.rollout_prompts, args.gen_prompt, model.config.vocab_size,
                                torch.Generator().manual_seed(args.seed + 1))
    ids, mask = ids.to(device), mask.to(device)
    T = args.rollout_tokens
    out = {}
    for G in args.rollout_groups:
        n_rows = ids.shape[0] * G
        generator = torch.Generator(device=device).manual_seed(args.seed)

        def engine(n=T):
            c = generate_batch(model, ids, mask, num_samples=G, max_new_tokens=n, eos_token_ids=[], pad_token_id=0,
                               temperature=1.0, generator=generator)
            assert c.tokens.shape == (n_rows, n), c.tokens.shape

        def hf_generate(n=T):
            with torch.no_grad():
                y = model.generate(input_ids=ids.repeat_interleave(G, 0), attention_mask=mask.repeat_interleave(G, 0),
                                   do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n, pad_token_id=0)
            assert y.shape == (n_rows, ids.shape[1] + n), y.shape

        methods = {"engine": engine, "generate": hf_generate}
        for fn in methods.values():  # warm-up
            fn(min(8, T))
        times = {name: [] for name in methods}
        for i in range(args.rollout_reps):
            for name in (list(methods) if i % 2 == 0 else list(methods)[::-1]):
                t, _ = timed(methods[name], device)
                times[name].append(t)
        r = {name: round(n_rows * T / statistics.median(t), 1) for name, t in times.items()}
        r["ratio"] = round(statistics.median(tg / te for te, tg in zip(times["engine"], times["generate"])), 3)
        out[f"G{G}"] = r
        log(f"  {preset} {dtype_name} G={G}: engine {r['engine']:,.0f} tok/s, generate {r['generate']:,.0f} tok/s, "
            f"{r['ratio']:.2f}x")
    del model
    gc.collect()
    return out


def bench_grpo_memory(args, preset, device, dtype_name):
    """Peak memory (above the level before) of one GRPO optimizer step per group size G: the rollout, the
    policy/reference log-probs, the loss, backward and AdamW, with --rollout_prompts prompts and every completion
    running to --rollout_tokens tokens (the worst case); the rollout through the engine (what GRPO uses) and,
    side by side, through generate()."""
    from argparse import Namespace

    from trainer.distributed import DistInfo
    from trainer.stages import GRPO

    torch.manual_seed(args.seed)
    model = build_ours(model_shape(preset), device).train()
    model.generation_config.eos_token_id = None
    ids, mask = rollout_prompts(args.rollout_prompts, args.gen_prompt, model.config.vocab_size,
                                torch.Generator().manual_seed(args.seed + 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    for param in model.parameters():  # create the optimizer state now: it is not part of a step's peak
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out = {}
    tokenizer = load_tokenizer()
    info = DistInfo(device=device)
    stage = GRPO()
    stage.reference = copy.deepcopy(model).eval().requires_grad_(False)
    stage.rewards = {"random": lambda completion, reference: random.random()}
    stage.tokenizer, stage.eos_ids, stage.progress, stage.thinking = tokenizer, [], 0.0, False
    for G in args.rollout_groups:
        out[f"G{G}"] = {}
        for sampler in ("engine", "generate"):
            grpo_args = Namespace(num_generations=G, max_new_tokens=args.rollout_tokens, temperature=1.0, top_p=1.0,
                                  beta=0.04, clip_eps=0.2, num_iterations=1, loss_type="grpo", scale_rewards="group",
                                  mask_truncated_completions=False, format_weight_start=1.0, dtype=dtype_name,
                                  sampler=sampler)
            batch = {"input_ids": ids, "attention_mask": mask, "references": [None] * len(ids),
                     "num_items": len(ids) * G}
            with PeakMemory(device) as peak:
                (rollout,) = stage.rollouts(model, [batch], grpo_args, info, seed=args.seed)
                with autocast(device, DTYPES[dtype_name]):
                    loss, _ = stage.loss(model, rollout, grpo_args)
                (loss / rollout["num_items"]).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            del rollout, loss
            out[f"G{G}"][sampler] = None if peak.mib is None else round(peak.mib, 1)
        log(f"  grpo memory {preset} {dtype_name} G={G}: engine {out[f'G{G}']['engine']} MiB, "
            f"generate {out[f'G{G}']['generate']} MiB")
    del model, optimizer, stage
    gc.collect()
    return out


# ----------------------------------------------------------------------------------------------------------------
# packing


def parse_pack_spec(spec: str, kit: Path):
    kind = None
    if ":" in spec.split("@")[0] and spec.split(":", 1)[0] in ("sft", "pretrain"):
        kind, spec = spec.split(":", 1)
    path, _, length = spec.rpartition("@")
    if not path:
        raise ValueError(f"--pack_files: expected [kind:]FILE@LEN, got {spec!r}")
    p = Path(path)
    if not p.exists() and (kit / f"{path}.jsonl").exists():
        p = kit / f"{path}.jsonl"
    if kind is None:
        kind = "pretrain" if "pretrain" in p.stem else "sft"
    return kind, p, int(length)


def bench_packing(args, shape, device, dtype_name, tokenizer):
    """Useful tokens/s of our model's training step, packed rows vs one padded sample per row, for two meanings of
    useful: real (non-padding) tokens, and loss-bearing tokens (assistant tokens of a conversation). The ceiling of
    each is the unpacked positions/s: every position useful."""
    from dataset import PackedBatchCollator, build_dataset
    dtype = DTYPES[dtype_name]
    kit = Path(args.sft_data).parent
    specs = args.pack_files if args.pack_files else [f"sft:{args.sft_data}@512"]
    results, notes = [], []
    torch.manual_seed(args.seed)
    stepper = Stepper(build_ours(shape, device), fused_adam=args.fused_adam)
    for spec in specs:
        kind, path, max_len = parse_pack_spec(spec, kit)
        if not path.exists():
            notes.append(f"packing {spec}: {path} not found, skipped")
            continue
        n = args.pack_warmup + args.pack_batches
        runs = {}
        for packing in (True, False):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = build_dataset(kind, path, tokenizer, max_len, packing=packing, cache_dir=args.cache_dir)
            collate = PackedBatchCollator(tokenizer.pad_token_id, max_len, pad_to_max=not packing)
            order = list(range(len(ds)))
            random.Random(args.seed).shuffle(order)
            rows = [[order[(i * args.batch_size + j) % len(order)] for j in range(args.batch_size)] for i in range(n)]
            batches = []
            for idx in rows:
                samples = [ds[j] for j in idx]
                batch = collate(samples)
                batch["num_real"] = sum(len(sample["input_ids"]) for row in samples for sample in row)
                batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            # the whole file's share of loss-bearing positions in this layout (rows of max_seq_len positions)
            file_share = ds.stats.n_label_tokens / (len(ds) * max_len) if len(ds) else 0.0
            runs["packed" if packing else "unpacked"] = {"batches": batches, "rows": len(ds), "file_share": file_share}
        stats = {name: {"time": 0.0, "useful": 0, "real": 0, "positions": 0} for name in runs}
        for i in range(n):
            layouts = ("packed", "unpacked") if i % 2 == 0 else ("unpacked", "packed")
            for name in layouts:
                batch = runs[name]["batches"][i]
                t, _ = timed(lambda: stepper.step(batch, device, dtype), device)
                if i >= args.pack_warmup:
                    s = stats[name]
                    s["time"] += t
                    s["useful"] += batch["num_items"]
                    s["real"] += batch["num_real"]
                    s["positions"] += batch["input_ids"].numel()
        r = {"file": str(path), "kind": kind, "max_seq_len": max_len, "batch_size": args.batch_size,
             "dtype": dtype_name}
        for name, s in stats.items():
            r[name] = {"rows": runs[name]["rows"],
                       "useful_tokens_per_s": round(s["useful"] / s["time"], 1),
                       "positions_per_s": round(s["positions"] / s["time"], 1),
                       "useful_share": round(s["useful"] / s["positions"], 4),
                       "real_tokens_per_s": round(s["real"] / s["time"], 1),
                       "real_share": round(s["real"] / s["positions"], 4),
                       "useful_share_file": round(runs[name]["file_share"], 4),
                       "mean_width": round(s["positions"] / args.pack_batches / args.batch_size, 1)}
        ceiling = r["unpacked"]["positions_per_s"]  # = unpacked useful rate / unpacked useful share
        r["ceiling_tokens_per_s"] = round(ceiling, 1)
        for key, prefix in (("useful", "packed"), ("real", "packed_real")):
            rate = r["packed"][f"{key}_tokens_per_s"]
            r[f"{prefix}_pct_of_ceiling"] = round(100 * rate / ceiling, 1)
            r[f"{prefix}_speedup"] = round(rate / r["unpacked"][f"{key}_tokens_per_s"], 3)
        results.append(r)
    del stepper
    gc.collect()
    return results, notes


# ----------------------------------------------------------------------------------------------------------------
# loss curve


def moving_average(xs, w):
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out


def run_loss_curve(args, shape, device, tokenizer):
    """fp32 and bf16-autocast training from one init on one data order; the steps alternate between the two."""
    from dataset import PackedBatchCollator, build_dataset
    from trainer.loop import learning_rate
    path = Path(args.pretrain_data)
    if not path.exists():
        raise SystemExit(f"--loss_curve needs the pretrain data: {path} not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_dataset("pretrain", path, tokenizer, args.seq_len, packing=True, cache_dir=args.cache_dir)
    collate = PackedBatchCollator(tokenizer.pad_token_id, args.seq_len)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed)).tolist()
    torch.manual_seed(args.seed)
    model = build_ours(shape, device)
    runs = {"float32": Stepper(model, lr=args.lr, fused_adam=args.fused_adam),
            "bfloat16": Stepper(copy.deepcopy(model), lr=args.lr, fused_adam=args.fused_adam)}
    losses = {name: [] for name in runs}
    seconds = {name: 0.0 for name in runs}
    steps, t_start = args.loss_curve, time.perf_counter()
    for step in range(steps):
        idx = [order[(step * args.batch_size + j) % len(order)] for j in range(args.batch_size)]
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate([ds[j] for j in idx]).items()}
        lr = learning_rate(step, steps, args.lr, 0)
        for name, s in runs.items():
            for group in s.optimizer.param_groups:
                group["lr"] = lr
            t, loss = timed(lambda: s.step(batch, device, DTYPES[name]), device)
            seconds[name] += t
            losses[name].append(loss)
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            log(f"loss curve {step + 1}/{steps}: fp32 {losses['float32'][-1]:.4f}  bf16 {losses['bfloat16'][-1]:.4f}"
                f"  ({time.perf_counter() - t_start:.0f} s)")
    w = max(1, min(args.smooth, steps // 5 or 1))
    s32, s16 = moving_average(losses["float32"], w), moving_average(losses["bfloat16"], w)
    gaps = [abs(b - a) / a for a, b in zip(s32[w - 1:], s16[w - 1:])]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    checkpoints = sorted({min(steps, max(w, round(steps * k / 10))) for k in range(1, 11)})
    return {
        "data": str(path), "steps": steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "lr": args.lr,
        "smooth_window": w,
        "max_rel_diff": round(gaps[worst], 5), "at_step": worst + w,
        "final_smoothed": {"float32": round(s32[-1], 4), "bfloat16": round(s16[-1], 4)},
        "within_1pct": gaps[worst] <= 0.01,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "smoothed": [{"step": c, "float32": round(s32[c - 1], 4), "bfloat16": round(s16[c - 1], 4)} for c in checkpoints],
        "raw": {k: [round(x, 5) for x in v] for k, v in losses.items()},
    }


# ----------------------------------------------------------------------------------------------------------------
# output


# ----------------------------------------------------------------------------------------------------------------
# activation checkpointing


def bench_checkpointing(args, shape, device, dtype_name):
    """Our model's training step without and with activation checkpointing, same weights and batches: peak memory
    of a steady-state step (optimizer state already allocated) and the median step time."""
    dtype = DTYPES[dtype_name]
    torch.manual_seed(args.seed)
    model = build_ours(shape, device)
    stepper = Stepper(model, compile_model=args.compile, fused_adam=args.fused_adam)
    g = torch.Generator().manual_seed(args.seed)
    batches = [random_batch(model.config.vocab_size, args.batch_size, args.seq_len, device, g) for _ in range(2)]
    res = {"dtype": dtype_name, "params": model.num_parameters()}
    for mode in ("without", "with"):
        if mode == "with":
            model.activation_checkpointing_enable()
        log(f"checkpointing: {mode} ...")
        for i in range(max(1, args.warmup - 1)):
            stepper.step(batches[i % 2], device, dtype)
        with PeakMemory(device) as mem:
            stepper.step(batches[0], device, dtype)
        times = [timed(lambda: stepper.step(batches[i % 2], device, dtype), device)[0] for i in range(args.steps)]
        step = statistics.median(times)
        res[mode] = {"step_mem_mib": None if mem.mib is None else round(mem.mib, 1), "step_ms": round(step * 1e3, 1),
                     "tokens_per_s": round(args.batch_size * args.seq_len / step, 1)}
    off, on = res["without"], res["with"]
    if off["step_mem_mib"] and on["step_mem_mib"] is not None:
        res["memory_saved"] = round(1 - on["step_mem_mib"] / off["step_mem_mib"], 4)
    res["time_cost"] = round(on["step_ms"] / off["step_ms"] - 1, 4)
    del stepper, model
    gc.collect()
    return res


# ----------------------------------------------------------------------------------------------------------------
# the server


def _stream_chat(port: int, body: bytes) -> int:
    """One streamed chat completion over a fresh connection, read to [DONE]: its completion tokens (from usage)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"server answered {response.status}: {response.read()[:300]!r}")
        tokens = None
        for line in response:
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                break
            usage = json.loads(payload).get("usage")
            if usage:
                tokens = usage["completion_tokens"]
        return tokens
    finally:
        conn.close()


def _clients(port: int, bodies, concurrent: bool) -> tuple[float, int]:
    """(wall seconds, completion tokens) of sending `bodies` one after another or all at once (one thread each)."""
    import threading
    if not concurrent:
        start = time.perf_counter()
        tokens = sum(_stream_chat(port, body) for body in bodies)
        return time.perf_counter() - start, tokens
    counts, errors = [0] * len(bodies), []
    barrier = threading.Barrier(len(bodies) + 1)

    def client(i):
        barrier.wait()
        try:
            counts[i] = _stream_chat(port, bodies[i])
        except Exception as e:  # re-raised below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds, sum(counts)


def bench_server(args, preset: str) -> dict:
    """Throughput (new tokens/s) of the server with N streaming clients at once vs the same N requests sent one
    after another, for each N in --server_clients; the two orders alternate across --server_reps repetitions."""
    import threading
    from model import MiniMindConfig, MiniMindForCausalLM
    from inference.openai_api import ServedModel
    from inference.server import make_server
    torch.manual_seed(args.seed)
    model = MiniMindForCausalLM(MiniMindConfig(**model_shape(preset))).eval()
    tokenizer = load_tokenizer()
    # a random model seldom writes its end token; the end token is ignored so every request runs to max_tokens
    model.generation_config.eos_token_id = None
    served = ServedModel(preset, model, tokenizer, max_batch=max(args.server_clients), compile=args.compile)
    served.batcher.eos_ids = []
    server = make_server([served], "127.0.0.1", 0, quiet=True, web=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    topics = ["the weather", "a cat", "rivers", "bread", "music", "the moon", "trains", "gardens"]
    bodies = [json.dumps({"model": preset, "stream": True, "stream_options": {"include_usage": True},
                          "temperature": 0, "max_tokens": args.server_tokens,
                          "messages": [{"role": "user", "content": f"Tell me about {topics[i % 8]}" + " please" * (i % 5)}]}
                         ).encode() for i in range(max(args.server_clients))]
    out = {"preset": preset, "parameters": sum(p.numel() for p in model.parameters()), "clients": {}}
    # the clients run in a process of their own, as real clients would: reading their streams does not compete
    # with the server for its interpreter
    import multiprocessing
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        for n in (1, max(args.server_clients)) if args.compile else (2,):  # warm-up (compiles one- and many-row steps)
            log(f"server {preset}: warm-up with {n} client(s) ...")
            pool.apply(_clients, (server.port, bodies[:n], True))
        for n in args.server_clients:
            times = {"sequential": [], "concurrent": []}
            tokens = None
            for rep in range(args.server_reps):
                for mode in (["sequential", "concurrent"] if rep % 2 == 0 else ["concurrent", "sequential"]):
                    log(f"server {preset}: {n} client(s), {mode} ...")
                    seconds, got = pool.apply(_clients, (server.port, bodies[:n], mode == "concurrent"))
                    times[mode].append(seconds)
                    tokens = got
            seq, con = statistics.median(times["sequential"]), statistics.median(times["concurrent"])
            out["clients"][n] = {"tokens": tokens, "sequential_tok_s": round(tokens / seq, 1),
                                 "concurrent_tok_s": round(tokens / con, 1), "ratio": round(seq / con, 2)}
    finally:
        pool.terminate()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    return out


def print_server(results, config):
    print(f"server throughput, new tokens/s (random models, fp32, {config['threads']} thread(s), "
          f"{config['server_tokens']} greedy tokens per request, streaming{', compiled' if config['compile'] else ''}):")
    print(f"  {'preset':<8} {'clients':>7} {'sequential':>11} {'concurrent':>11} {'ratio':>6}")
    for r in results:
        for n, c in r["clients"].items():
            print(f"  {r['preset']:<8} {n:>7} {c['sequential_tok_s']:>11} {c['concurrent_tok_s']:>11} {c['ratio']:>5}x")
    for note in config.get("notes", []):
        print(f"  note: {note}")


def interleaved_ms(step, variants: list, steps: int, device) -> dict:
    """{variant: median ms of step(variant)} after one warm-up each, the variants run in alternating order so that
    a change in the machine's speed falls on all of them alike."""
    for variant in variants:
        step(variant)
    times = {variant: [] for variant in variants}
    for i in range(steps):
        for variant in (variants if i % 2 == 0 else variants[::-1]):
            times[variant].append(timed(lambda: step(variant), device)[0])
    return {variant: round(1e3 * statistics.median(t), 2) for variant, t in times.items()}


def bench_attention(args, cfg, device):
    """ms of one SDPA forward + backward (causal, GQA as the preset has it) per row length, bf16 and fp32 inputs,
    runs interleaved; 'model' is the dtype MiniMind's attention trains in there under bf16 autocast."""
    import torch.nn.functional as F

    from model.modeling_minimind import CPU_FP32_ATTENTION_MAX_POSITIONS

    H, K, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    rows = []
    for T in (32,) if args.quick else (128, 256, 512, 768):
        B = max(1, 4096 // T)
        g = torch.Generator().manual_seed(args.seed)
        qkv32 = [torch.randn(B, n, T, D, generator=g).to(device) for n in (H, K, K)]
        inputs = {dt: [t.to(DTYPES[dt]).requires_grad_() for t in qkv32] for dt in ("bfloat16", "float32")}

        def step(dt):
            q, k, v = inputs[dt]
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != K).sum().backward()

        ms = interleaved_ms(step, list(inputs), args.steps, device)
        fp32_in_training = device.type == "cpu" and T <= CPU_FP32_ATTENTION_MAX_POSITIONS
        rows.append({"seq_len": T, "batch_size": B, "bf16_ms": ms["bfloat16"], "fp32_ms": ms["float32"],
                     "model": "float32" if fp32_in_training else "bfloat16"})
        log(f"attention T={T} x B={B}: bf16 {ms['bfloat16']:.1f} ms, fp32 {ms['float32']:.1f} ms")
    return {"heads": [H, K, D], "attention": rows}


def bench_loss_head(args, cfg, device):
    """ms of the head + loss forward + backward at N labelled positions: F.linear then token_cross_entropy (the
    vocab-wide logits) against losses.linear_cross_entropy, runs interleaved, in fp32 and under bf16 autocast."""
    import torch.nn.functional as F

    from trainer import losses

    N = 256 if args.quick else 4096
    g = torch.Generator().manual_seed(args.seed)
    hidden = torch.randn(N, cfg.hidden_size, generator=g).to(device).requires_grad_()
    head = (0.02 * torch.randn(cfg.vocab_size, cfg.hidden_size, generator=g)).to(device).requires_grad_()
    labels = torch.randint(0, cfg.vocab_size, (N,), generator=g).to(device)
    paths = {"logits": lambda: losses.token_cross_entropy(F.linear(hidden, head), labels),
             "fused": lambda: losses.linear_cross_entropy(hidden, head, labels)}
    rows = []
    for dt in ("float32", "bfloat16"):
        def step(path):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dt == "bfloat16"):
                ce = paths[path]()
            ce.sum().backward()
            hidden.grad = head.grad = None

        ms = interleaved_ms(step, list(paths), args.steps, device)
        rows.append({"dtype": dt, "logits_ms": ms["logits"], "fused_ms": ms["fused"]})
        log(f"loss head {dt}: logits {ms['logits']:.1f} ms, fused {ms['fused']:.1f} ms")
    return {"positions": N, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "loss_head": rows}


def bench_rollout_loss(args, cfg, device, dtype_name: str):
    """ms of GRPO's loss passes on one rollout, building its inputs included: the G rows per prompt padded (P + C
    positions each) against one row per prompt holding its replies as branches (trainer/stages.py
    GRPO.model_inputs), interleaved runs."""
    from model import MiniMindForCausalLM
    from trainer import losses
    from trainer.stages import GRPO

    torch.manual_seed(args.seed)
    policy = MiniMindForCausalLM(cfg).to(device).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    rng = random.Random(args.seed)
    prompts = [rng.randint(16, 24) for _ in range(2)] if args.quick else [430, 450, 470, 520]
    rows = []
    for G in args.rollout_groups:
        lengths = [rng.randint(4, 8) if args.quick else rng.randint(40, 140) for _ in range(len(prompts) * G)]
        P, C, N = max(prompts), max(lengths), len(lengths)
        sequences = torch.randint(3, cfg.vocab_size, (N, P + C))
        prompt_mask = torch.zeros(N, P, dtype=torch.long)
        attention = torch.zeros(N, C, dtype=torch.bool)
        for n, length in enumerate(lengths):
            p = prompts[n // G]
            sequences[n, P - p:P] = sequences[(n // G) * G, P - p:P]  # a group's rows share their prompt
            prompt_mask[n, P - p:] = 1
            attention[n, :length] = True
        batch = {"sequences": sequences.to(device), "prompt_mask": prompt_mask.to(device),
                 "completion_attention": attention.to(device)}
        targets = batch["sequences"][:, P:].masked_fill(~batch["completion_attention"], losses.IGNORE)
        groups = {"padded": 1, "shared": G}
        layouts = {name: GRPO.model_inputs(batch, g) for name, g in groups.items()}
        if layouts["shared"]["input_ids"].shape[0] != len(prompts):
            raise SystemExit("error: GRPO.model_inputs kept the padded rows for this shape; nothing to compare")

        def step(layout):
            inputs = GRPO.model_inputs(batch, groups[layout])  # building the layout is part of the cost
            with torch.autocast(device.type, dtype=DTYPES[dtype_name], enabled=dtype_name != "float32"):
                with torch.no_grad():
                    reference(**inputs)
                logits = policy(**inputs).logits
                losses.token_cross_entropy(logits, targets.flatten()).sum().backward()
            policy.zero_grad(set_to_none=True)

        ms = interleaved_ms(step, list(layouts), args.steps, device)
        positions = {k: v["input_ids"].numel() for k, v in layouts.items()}
        rows.append({"G": G, "padded_ms": ms["padded"], "shared_ms": ms["shared"],
                     "padded_positions": positions["padded"], "shared_positions": positions["shared"]})
        log(f"rollout loss G={G}: padded {ms['padded']:.1f} ms ({positions['padded']} positions), "
            f"shared {ms['shared']:.1f} ms ({positions['shared']})")
    return {"prompts": prompts, "replies": [4, 8] if args.quick else [40, 140], "dtype": dtype_name,
            "rollout_loss": rows}


def print_rollout_loss(r):
    c = r["config"]
    print(f"GRPO loss on one rollout ({c['preset']}, {r['dtype']}, {len(r['prompts'])} prompts of "
          f"{min(r['prompts'])}-{max(r['prompts'])} tokens, G replies of {r['replies'][0]}-{r['replies'][1]}): inputs, "
          f"policy forward + backward and reference forward, {c['device_name']}, {c['threads']} threads; "
          f"ms = median of {c['steps']}")
    print(f"{'G':>3} {'padded ms':>10} {'positions':>9} {'shared ms':>10} {'positions':>9} {'shared/padded':>13}")
    for row in r["rollout_loss"]:
        print(f"{row['G']:>3} {row['padded_ms']:>10.1f} {row['padded_positions']:>9} {row['shared_ms']:>10.1f} "
              f"{row['shared_positions']:>9} {row['shared_ms'] / row['padded_ms']:>12.2f}x")
    for note in r.get("notes", []):
        print(f"note: {note}")


def print_loss_head(r):
    c = r["config"]
    print(f"LM head + cross entropy forward + backward, {r['positions']} positions x {r['hidden_size']} -> vocab "
          f"{r['vocab_size']} ({c['preset']}), {c['device_name']}, {c['threads']} threads; ms = median of {c['steps']}")
    print(f"{'dtype':>9} {'logits ms':>10} {'fused ms':>9} {'fused/logits':>12}")
    for row in r["loss_head"]:
        print(f"{row['dtype']:>9} {row['logits_ms']:>10.1f} {row['fused_ms']:>9.1f} "
              f"{row['fused_ms'] / row['logits_ms']:>11.2f}x")
    for note in r.get("notes", []):
        print(f"note: {note}")


def print_attention(r):
    c = r["config"]
    H, K, D = r["heads"]
    print(f"attention forward + backward (SDPA, causal, {H} query / {K} kv heads of {D}), {c['preset']}, "
          f"{c['device_name']}, {c['threads']} threads; ms = median of {c['steps']}")
    print(f"{'positions':>9} {'rows':>5} {'bf16 ms':>8} {'fp32 ms':>8} {'bf16/fp32':>9}  model trains in")
    for row in r["attention"]:
        print(f"{row['seq_len']:>9} {row['batch_size']:>5} {row['bf16_ms']:>8.1f} {row['fp32_ms']:>8.1f} "
              f"{row['bf16_ms'] / row['fp32_ms']:>8.2f}x  {row['model']}")
    for note in r.get("notes", []):
        print(f"note: {note}")


def print_checkpointing(r):
    c = r["config"]
    what = "RSS above the idle process" if c["device"] == "cpu" else "max_memory_allocated above the idle model"
    print(f"activation checkpointing: {c['preset']} ({r['params'] / 1e6:.1f}M params), seq {c['seq_len']} x batch "
          f"{c['batch_size']}, {r['dtype']}, {c['device_name']}, {c['threads']} threads; step memory = peak {what} "
          f"during one steady-state training step; step time = median of {c['steps']}")
    print(f"{'checkpointing':<14} {'step MiB':>9} {'step ms':>9} {'tok/s':>8}")
    for mode in ("without", "with"):
        m = r[mode]
        mem = "-" if m["step_mem_mib"] is None else f"{m['step_mem_mib']:,.0f}"
        print(f"{mode:<14} {mem:>9} {m['step_ms']:>9,.1f} {m['tokens_per_s']:>8,.0f}")
    if "memory_saved" in r:
        print(f"memory saved: {pct(r['memory_saved'])}; time cost: {pct(r['time_cost'])}")
    for note in r.get("notes", []):
        print(f"note: {note}")


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def print_table(r):
    c = r["config"]
    print(f"MiniMind bench: {c['preset']} (dim {c['hidden_size']}, {c['num_hidden_layers']} layers, heads "
          f"{c['num_attention_heads']}/{c['num_key_value_heads']}, vocab {c['vocab_size']}), seq {c['seq_len']} x "
          f"batch {c['batch_size']}, {c['device_name']}, {c['threads']} threads, torch {c['torch']}, "
          f"transformers {c['transformers']}")
    if r.get("peak"):
        print("\nmatmul peak (" + f"{c['peak_size']}^3): " +
              ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in r["peak"].items()))
    if r.get("train"):
        extras = [x for x, on in (("torch.compile", c["compile"]), ("fused AdamW", c["fused_adam"])) if on]
        print(f"\ntraining step (fwd+bwd+clip+AdamW, median of {c['steps']} after {c['warmup']} warm-up; "
              f"FLOPs/token = 6N + 12·L·T·d{'; ' + ', '.join(extras) if extras else ''})")
        cuda = c["device"].startswith("cuda")
        head = f"{'dtype':<9} {'model':<9} {'params':>8} {'step ms':>8} {'tok/s':>9} {'GFLOP/s':>8} {'% peak':>7}"
        head += f" {'MFU':>6}" if cuda else ""
        head += f" {'step MiB':>9} {'ours/base':>9}"
        print(head)
        for dt, t in r["train"].items():
            for name in ("ours", "baseline"):
                m = t[name]
                mem = m.get("step_mem_mib")
                line = (f"{dt:<9} {name:<9} {m['params'] / 1e6:>7.2f}M {m['step_ms']:>8.1f} {m['tokens_per_s']:>9,.0f} "
                        f"{m['tflops'] * 1e3:>8.1f} {pct(m.get('share_of_peak')):>7}")
                line += f" {pct(m.get('mfu_bf16_spec')):>6}" if cuda else ""
                line += f" {'-' if mem is None else f'{mem:,.0f}':>9}"
                line += f" {t['ratio']:>8.3f}x" if name == "ours" else ""
                print(line)
            if not cuda:
                print(f"{'':<9} ours/baseline from process CPU time: {t['ratio_cpu_time']:.3f}x")
    if r.get("generation"):
        print(f"\ngeneration (greedy, KV cache, prompt {c['gen_prompt']}, {c['gen_tokens']} new tokens; new tok/s; "
              f"bf16 = bf16 weights)")
        print(f"{'dtype':<9} {'batch':>5} {'ours':>9} {'baseline':>9} {'ours/base':>9}")
        for dt, g in r["generation"].items():
            for b, v in g.items():
                print(f"{dt:<9} {b[1:]:>5} {v['ours']:>9,.1f} {v['baseline']:>9,.1f} {v['ratio']:>8.3f}x")
    if r.get("rollout"):
        print(f"\nrollouts ({c['rollout_prompts']} prompts x G samples, prompt {c['gen_prompt']}, {c['rollout_tokens']} new "
              f"tokens, temperature 1; new tok/s; engine = inference/engine.py, generate = HF generate() on our model)")
        print(f"{'preset':<8} {'dtype':<9} {'G':>3} {'engine':>9} {'generate':>9} {'engine/gen':>10}")
        for preset, by_dtype in r["rollout"].items():
            for dt, groups in by_dtype.items():
                for g, v in groups.items():
                    print(f"{preset:<8} {dt:<9} {g[1:]:>3} {v['engine']:>9,.1f} {v['generate']:>9,.1f} {v['ratio']:>9.3f}x")
    if r.get("grpo_memory"):
        print(f"\nGRPO step peak memory above the model's own (MiB; {c['rollout_prompts']} prompts, every completion "
              f"{c['rollout_tokens']} tokens; the rollout through the engine, and through generate())")
        print(f"{'preset dtype':<18} {'G':>3} {'engine':>9} {'generate':>9}")
        for key, by_g in r["grpo_memory"].items():
            for g, v in by_g.items():
                print(f"{key:<18} {g[1:]:>3} " + " ".join("        -" if v[m] is None else f"{v[m]:>9,.0f}"
                                                          for m in ("engine", "generate")))
    if r.get("packing"):
        print("\nuseful-token throughput of our training step: real = non-padding tokens, loss = loss-bearing tokens;"
              " ceiling = unpacked positions/s (every position useful)")
        print(f"{'file':<16} {'len':>5} {'layout':<9} {'rows':>6} {'real':>6} {'real/s':>7} {'loss':>6} {'loss/s':>7} "
              f"{'pos/s':>7} | {'ceiling':>7} {'real%ceil':>9} {'speedup':>7} {'loss%ceil':>9} {'speedup':>7}")
        for p in r["packing"]:
            for name in ("unpacked", "packed"):
                m = p[name]
                line = (f"{Path(p['file']).name:<16} {p['max_seq_len']:>5} {name:<9} {m['rows']:>6} "
                        f"{pct(m['real_share']):>6} {m['real_tokens_per_s']:>7,.0f} {pct(m['useful_share']):>6} "
                        f"{m['useful_tokens_per_s']:>7,.0f} {m['positions_per_s']:>7,.0f}")
                if name == "packed":
                    line += (f" | {p['ceiling_tokens_per_s']:>7,.0f} {p['packed_real_pct_of_ceiling']:>8.1f}% "
                             f"{p['packed_real_speedup']:>6.2f}x {p['packed_pct_of_ceiling']:>8.1f}% {p['packed_speedup']:>6.2f}x")
                print(line)
            print(f"{'':<16} ({p['dtype']})")
    for note in r.get("notes", []):
        print(f"note: {note}")


def print_loss_curve(r):
    print(f"loss curve: {r['steps']} steps of batch {r['batch_size']} x {r['seq_len']} on {r['data']}, lr {r['lr']} "
          f"(cosine), moving average over {r['smooth_window']} steps")
    print(f"{'step':>6} {'fp32':>8} {'bf16':>8} {'rel diff':>9}")
    for p in r["smoothed"]:
        print(f"{p['step']:>6} {p['float32']:>8.4f} {p['bfloat16']:>8.4f} "
              f"{100 * abs(p['bfloat16'] - p['float32']) / p['float32']:>8.2f}%")
    print(f"max relative difference of the smoothed curves: {100 * r['max_rel_diff']:.2f}% at step {r['at_step']} "
          f"({'within' if r['within_1pct'] else 'NOT within'} 1%); time fp32 {r['seconds']['float32']} s, "
          f"bf16 {r['seconds']['bfloat16']} s")


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    import transformers
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if args.agent_memory:
        return agent_memory_main(args, device)
    shape = model_shape(args.config)
    has_bf16 = native_bf16(device)
    if args.dtype is None:
        dtypes = ["float32", "bfloat16"] if has_bf16 else ["float32"]
    else:
        dtypes = ["float32", "bfloat16"] if args.dtype == "both" else [args.dtype]
    notes = []
    load_start = os.getloadavg()[0]
    if "bfloat16" in dtypes and not has_bf16:
        notes.append("bfloat16 requested but this device has no native bf16 matmuls: figures are emulated")

    from model import MiniMindConfig
    cfg = MiniMindConfig(**shape)
    config = {"preset": args.config, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
              "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
              "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size, "use_moe": cfg.use_moe,
              "seq_len": args.seq_len, "batch_size": args.batch_size, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"CPU ({torch.backends.cpu.get_cpu_capability()})",
              "threads": args.threads, "dtypes": dtypes, "steps": args.steps, "warmup": args.warmup,
              "gen_tokens": args.gen_tokens, "gen_prompt": args.gen_prompt, "compile": args.compile,
              "rollout_prompts": args.rollout_prompts, "rollout_tokens": args.rollout_tokens,
              "fused_adam": args.fused_adam,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "cpu_count": os.cpu_count(), "loadavg_start": round(load_start, 2),
              "peak_size": args.peak_size or (8192 if device.type == "cuda" else 2048)}

    if args.server:
        config.update(server_tokens=args.server_tokens, server_reps=args.server_reps)
        results = [bench_server(args, preset) for preset in args.server.split(",") if preset]
        busy_note(config, notes, "the absolute rates are noisy; each ratio compares runs interleaved in time")
        config["notes"] = notes
        if args.json:
            print(json.dumps({"config": config, "server": results}))
        else:
            print_server(results, config)
        return results

    def single_part(r, print_table, noisy):  # --grad_ckpt, --attention, --loss_head, --loss_curve: one part
        busy_note(config, notes, noisy)
        r.update({"config": config, "notes": notes})
        if args.json:
            print(json.dumps(r))
        else:
            print_table(r)
        return r

    if args.grad_ckpt:
        dtype_name = args.dtype if args.dtype in DTYPES else ("bfloat16" if has_bf16 else "float32")
        return single_part(bench_checkpointing(args, shape, device, dtype_name), print_checkpointing,
                           "the step times are noisy (the memory figures are not affected)")
    if args.attention:
        return single_part(bench_attention(args, cfg, device), print_attention,
                           "the times are noisy; each ratio compares runs interleaved in time")
    if args.loss_head:
        return single_part(bench_loss_head(args, cfg, device), print_loss_head,
                           "the times are noisy; each ratio compares runs interleaved in time")
    if args.rollout_loss:
        dtype_name = args.dtype if args.dtype in DTYPES else ("bfloat16" if has_bf16 else "float32")
        return single_part(bench_rollout_loss(args, cfg, device, dtype_name), print_rollout_loss,
                           "the times are noisy; each ratio compares runs interleaved in time")
    if args.loss_curve is not None:
        if not has_bf16:
            notes.append("no native bf16 on this device: the bf16 curve is emulated")
        return single_part(run_loss_curve(args, shape, device, load_tokenizer()), print_loss_curve,
                           "the timings are noisy (the losses are not affected)")

    result = {"config": config, "flops_per_token_formula": "6*N_matmul + 12*L*T*d (fwd+bwd; no causal discount)",
              "peak": {}, "train": {}, "generation": {}, "packing": [], "notes": notes}
    peak_dtypes = ["float32", "bfloat16"] if has_bf16 else ["float32"]

    def measure_peaks():  # at the start and again at the end: the peak is the better of the two
        for dt in peak_dtypes:
            log(f"peak: {dt} {config['peak_size']}^3 matmul ...")
            result["peak"][dt] = max(result["peak"].get(dt, 0.0), matmul_peak(device, DTYPES[dt], config["peak_size"]))

    if "peak" not in args.skip:
        measure_peaks()
    if "train" not in args.skip:
        for dt in dtypes:
            log(f"train: {dt} ...")
            result["train"][dt] = bench_train(args, shape, device, dt, result["peak"], memory="memory" not in args.skip)
    if "generation" not in args.skip:
        for dt in dtypes:
            log(f"generation: {dt} ...")
            result["generation"][dt] = bench_generation(args, shape, device, dt)
    if args.rollout:
        result["rollout"] = {}
        for preset in args.rollout_configs:
            for dt in dtypes:
                log(f"rollout: {preset} {dt} ...")
                result["rollout"].setdefault(preset, {})[dt] = bench_rollout(args, preset, device, dt)
    if args.grpo_memory:
        result["grpo_memory"] = {}
        for dt in dtypes:
            log(f"grpo memory: {args.rollout_configs[0]} {dt} ...")
            result["grpo_memory"][f"{args.rollout_configs[0]} {dt}"] = bench_grpo_memory(
                args, args.rollout_configs[0], device, dt)
    if "packing" not in args.skip:
        pack_dtype = args.pack_dtype or ("bfloat16" if "bfloat16" in dtypes else "float32")
        log(f"packing: {pack_dtype} ...")
        result["packing"], pack_notes = bench_packing(args, shape, device, pack_dtype, load_tokenizer())
        notes.extend(pack_notes)
    if "peak" not in args.skip and not args.quick:
        measure_peaks()
        for dt, t in result["train"].items():  # shares against the final peak
            for name in ("ours", "baseline"):
                m = t[name]
                m["share_of_peak"] = round(m["tflops"] * 1e12 / result["peak"][dt], 4) if dt in result["peak"] else None
    busy_note(config, notes)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return result


def busy_note(config, notes, what="absolute rates are low and noisy; the interleaved ours/baseline ratios are "
                                    "the figures to trust"):
    """Record the 1-minute load average at the end and warn when other work shared the CPUs."""
    config["loadavg_end"] = round(os.getloadavg()[0], 2)
    if config["device"] == "cpu":
        others = max(config["loadavg_start"], config["loadavg_end"] - config["threads"])
        if others >= 1.0:
            notes.append(f"the machine was busy (1-min load average {config['loadavg_start']} at the start, "
                         f"{config['loadavg_end']} at the end, {config['cpu_count']} CPUs): {what}")


# ----------------------------------------------------------------------------------------------------------------
# agentic RL: step memory against the number of tool rounds

def bench_agent_memory(args, device, turns_list=(1, 2, 4), tasks=4, group=8, reply_tokens=48) -> dict:
    """Peak memory (PeakMemory: RSS above the idle process on CPU) and time of one steady-state agent-RL step: the
    rollout (tool calls run, tool turns rendered), the loss's policy and reference forwards, backward and AdamW.
    The replies are scripted, each `reply_tokens` long and always calling the task's first tool, so every
    trajectory makes max_tool_turns rounds of calls and one more reply: the longest trajectories the setting allows
    (a model's own replies end sooner or later, so its steps take at most this). Sampling itself is not timed."""
    from types import SimpleNamespace

    from dataset.demo import agent_task_lines
    from inference.tool_loop import render_prompt
    from trainer.agent import Agent, AgentCollator, encode

    torch.manual_seed(args.seed)
    shape = model_shape(args.agent_memory)
    model = build_ours(shape, device).train()
    tokenizer = load_tokenizer()
    rows = agent_task_lines(random.Random(args.seed), tasks)
    batch = AgentCollator(group)([[{"task": r, "input_ids": encode(tokenizer, render_prompt(
        tokenizer, r["messages"], r["tools"], False))}] for r in rows])
    call = rows[0]["expected_calls"][0]
    text = f'<tool_call>\n{{"name": "{call["name"]}", "arguments": {json.dumps(call["arguments"])}}}\n</tool_call>'
    reply = encode(tokenizer, text)
    reply = encode(tokenizer, " ok" * (reply_tokens - 1 - len(reply))) + reply + [tokenizer.eos_token_id]

    def always_calls(contexts, num_samples):
        return [(list(reply), True)] * (len(contexts) * num_samples)

    from trainer.distributed import DistInfo

    settings = SimpleNamespace(num_generations=group, max_new_tokens=reply_tokens, max_seq_len=1 << 16,
                               temperature=1.0, top_p=1.0, clip_eps=0.2, beta=0.04, format_weight_start=1.0,
                               rewards="answer,calls,format,unfinished", open_thinking=False, max_tool_turns=1,
                               num_iterations=1, loss_type="grpo", scale_rewards="group",
                               mask_truncated_completions=False, sampler="engine", dtype="float32")
    stage = Agent()
    stage.setup(settings, model, tokenizer, None)
    assert hasattr(stage, "reply_sampler"), "Agent's sampler hook was renamed: the scripted replies would not be used"
    stage.reply_sampler = lambda model, args, generator: always_calls  # scripted replies instead of sampling
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    info = DistInfo(device=device)

    def step():
        (rollout,) = stage.rollouts(model, [batch], settings, info, seed=args.seed)
        loss, sums = stage.loss(model, rollout, settings)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return sums

    result = {"preset": args.agent_memory, "params": model.num_parameters(), "tasks": tasks, "group": group,
              "reply_tokens": reply_tokens, "rows": []}
    for turns in turns_list:
        settings.max_tool_turns = turns
        log(f"agent memory: --max_tool_turns {turns} ...")
        step()  # warm-up: optimizer state allocated
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            sums = step()
            seconds = time.perf_counter() - start
        n = tasks * group
        result["rows"].append({"max_tool_turns": turns, "trajectory_tokens": round(float(sums["trajectory_tokens"]) / n, 1),
                               "generated_tokens": round(float(sums["completion_length"]) / n, 1),
                               "step_mem_mib": None if mem.mib is None else round(mem.mib, 1),
                               "step_s": round(seconds, 2)})
    return result


def agent_memory_main(args, device):
    r = bench_agent_memory(args, device)
    r["loadavg_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(r))
        return r
    what = "RSS above the idle process" if device.type == "cpu" else "max_memory_allocated above the idle model"
    print(f"agent-RL step: {r['preset']} preset ({r['params'] / 1e6:.1f}M params), {r['tasks']} tasks x "
          f"{r['group']} trajectories, replies of {r['reply_tokens']} tokens that always call a tool, {device}, "
          f"{args.threads} threads; step memory = peak {what} during one steady-state step (rollout, policy and "
          f"reference forwards, backward, AdamW)")
    print(f"{'max_tool_turns':>14} {'tokens/trajectory':>18} {'generated':>10} {'step MiB':>9} {'step s':>7}")
    for row in r["rows"]:
        mem = "-" if row["step_mem_mib"] is None else f"{row['step_mem_mib']:,.0f}"
        print(f"{row['max_tool_turns']:>14} {row['trajectory_tokens']:>18,.0f} {row['generated_tokens']:>10,.0f} "
              f"{mem:>9} {row['step_s']:>7.2f}")
    return r


if __name__ == "__main__":
    main()
