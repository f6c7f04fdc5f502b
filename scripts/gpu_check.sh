#!/usr/bin/env bash
# The GPU check: one command for a machine with a CUDA GPU, about 5-8 minutes, no internet needed.
#   1. the CUDA tests (pytest -k cuda)
#   2. scripts/bench.py --device cuda on the small and base presets, bf16, with and without --compile:
#      training tokens/s, MFU against the card's nominal dense bf16 peak, peak step memory;
#      and --grad_ckpt on base at seq 1024 (memory with/without activation checkpointing, time cost)
#   3. a 200-step small pretraining run under torchrun (1 process) with its final loss, plus an NCCL all-reduce
#      under torchrun (a single training process opens no process group, so NCCL is checked on its own)
#   4. one summary table (also in $OUT/summary.txt)
# Without CUDA it runs the CPU-safe parts (bench --quick on CPU, a short tiny pretraining under torchrun with
# gloo; CPU_STEPS=N steps, CPU_BENCH=0 skips the bench) and lists what it skipped. Data: $DATA, else ../shared/data/pretrain.jsonl when present, else generated demo data.
#
#   scripts/gpu_check.sh                      # results in a temporary folder, printed at the end
#   OUT=/tmp/gpu_check PYTHON=.venv/bin/python scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STATUS="$OUT/status.tsv"   # part <tab> ok|FAILED|skipped <tab> detail
: > "$STATUS"
note() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$STATUS"; echo "gpu_check: $1: $2 $3" >&2; }
step() { echo "gpu_check: ---- $* ($(date +%T))" >&2; }

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  CUDA=1
  "$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0), torch.__version__, torch.version.cuda)" > "$OUT/device.txt"
else
  CUDA=0
  echo "no CUDA GPU (torch.cuda.is_available() is False)" > "$OUT/device.txt"
fi

# data for the training run
DATA=${DATA:-../shared/data/pretrain.jsonl}
if [ ! -f "$DATA" ]; then
  step "generating demo data"
  if [ -f dataset/make_demo_data.py ]; then
    "$PYTHON" -m dataset.make_demo_data --out_dir "$OUT/demo" >/dev/null
  else
    "$PYTHON" scripts/make_demo_data.py --out_dir "$OUT/demo" >/dev/null
  fi
  DATA="$OUT/demo/pretrain_hq.jsonl"
fi

if [ "$CUDA" = 1 ]; then
  step "CUDA tests"
  if "$PYTHON" -m pytest -q -rs -k cuda tests > "$OUT/tests.txt" 2>&1; then
    note "cuda tests" ok "$(tail -n 1 "$OUT/tests.txt")"
  else
    note "cuda tests" FAILED "$(tail -n 1 "$OUT/tests.txt") (see $OUT/tests.txt)"
  fi

  for preset in small base; do
    for compile in "" "--compile"; do
      name="bench_${preset}${compile:+_compile}"
      step "$name"
      if timeout 240 "$PYTHON" scripts/bench.py --device cuda --config "$preset" --dtype bfloat16 --batch_size 16 \
          --seq_len 512 --steps 10 --warmup 3 --skip generation,packing $compile --json > "$OUT/$name.json" 2> "$OUT/$name.err"; then
        note "$name" ok ""
      else
        note "$name" FAILED "(see $OUT/$name.err)"
      fi
    done
  done
  step "bench_grad_ckpt"
  if timeout 180 "$PYTHON" scripts/bench.py --device cuda --grad_ckpt --batch_size 8 --steps 5 --json \
      > "$OUT/bench_grad_ckpt.json" 2> "$OUT/bench_grad_ckpt.err"; then
    note bench_grad_ckpt ok ""
  else
    note bench_grad_ckpt FAILED "(see $OUT/bench_grad_ckpt.err)"
  fi

  step "NCCL all-reduce under torchrun"
  cat > "$OUT/nccl_check.py" <<'EOF'
import torch, torch.distributed as dist
dist.init_process_group("nccl")
x = torch.ones(1, device="cuda") * (dist.get_rank() + 1)
dist.all_reduce(x)
print("nccl all_reduce ok:", x.item(), "world", dist.get_world_size())
dist.destroy_process_group()
EOF
  if timeout 120 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 "$OUT/nccl_check.py" > "$OUT/nccl.txt" 2>&1; then
    note nccl ok "$(grep 'nccl all_reduce ok' "$OUT/nccl.txt")"
  else
    note nccl FAILED "(see $OUT/nccl.txt)"
  fi
  TRAIN=(--config small --max_steps 200 --epochs 10 --batch_size 32 --accumulation_steps 1 --device cuda --dtype bfloat16)
else
  note "cuda tests" skipped "no CUDA"
  note "bench small/base on cuda (with/without --compile)" skipped "no CUDA; ran bench.py --quick on the CPU instead"
  note "bench --grad_ckpt on cuda" skipped "no CUDA"
  note nccl skipped "no CUDA"
  step "bench --quick on the CPU"
  if [ "${CPU_BENCH:-1}" = 0 ]; then
    note bench_cpu_quick skipped "CPU_BENCH=0"
  elif timeout 300 "$PYTHON" scripts/bench.py --quick --skip generation,packing --json > "$OUT/bench_cpu_quick.json" 2> "$OUT/bench_cpu_quick.err"; then
    note bench_cpu_quick ok ""
  else
    note bench_cpu_quick FAILED "(see $OUT/bench_cpu_quick.err)"
  fi
  TRAIN=(--config tiny --max_steps "${CPU_STEPS:-20}" --batch_size 8 --accumulation_steps 1 --device cpu)
fi

step "pretraining under torchrun: ${TRAIN[*]}"
if timeout 300 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 train_pretrain.py --data_path "$DATA" \
    "${TRAIN[@]}" --save_interval 0 --log_interval 10 --out_dir "$OUT/train" --cache_dir "$OUT/cache" --quiet \
    > "$OUT/train.txt" 2>&1; then
  note pretrain ok ""
else
  note pretrain FAILED "(see $OUT/train.txt)"
fi

"$PYTHON" - "$OUT" > "$OUT/summary.txt" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"GPU check: {(out / 'device.txt').read_text().strip()}")
rows = []
for name in ("bench_small", "bench_small_compile", "bench_base", "bench_base_compile", "bench_cpu_quick"):
    f = out / f"{name}.json"
    if f.exists() and f.stat().st_size:
        r = json.loads(f.read_text())
        for dt, t in r["train"].items():
            m = t["ours"]
            rows.append((name, dt, m["tokens_per_s"], m.get("mfu_bf16_spec"), m.get("step_mem_mib"), t["ratio"]))
if rows:
    print(f"\n{'bench':<22} {'dtype':<9} {'tok/s':>10} {'MFU':>6} {'step MiB':>9} {'vs Llama':>8}")
    for name, dt, tps, mfu, mem, ratio in rows:
        print(f"{name:<22} {dt:<9} {tps:>10,.0f} {'-' if mfu is None else f'{100 * mfu:.1f}%':>6} "
              f"{'-' if mem is None else f'{mem:,.0f}':>9} {ratio:>7.2f}x")
f = out / "bench_grad_ckpt.json"
if f.exists() and f.stat().st_size:
    r = json.loads(f.read_text())
    print(f"\nactivation checkpointing, base seq {r['config']['seq_len']} x {r['config']['batch_size']}: step memory "
          f"{r['without']['step_mem_mib']:,.0f} -> {r['with']['step_mem_mib']:,.0f} MiB "
          f"({100 * r.get('memory_saved', 0):.0f}% less), time +{100 * r['time_cost']:.0f}%")
metrics = out / "train" / "runs" / "pretrain_512" / "metrics.jsonl"
if not metrics.exists():
    metrics = next((out / "train" / "runs").glob("*/metrics.jsonl"), None) if (out / "train" / "runs").exists() else None
if metrics:
    last = [json.loads(l) for l in metrics.read_text().splitlines() if '"loss"' in l][-1]
    print(f"\npretraining: {last['step']} steps, final loss {last['loss']:.3f}, {last['tok/s']:,.0f} tok/s, "
          f"{last['train_s']:.0f} s")
print("\npart                                             status   detail")
for line in (out / "status.tsv").read_text().splitlines():
    part, status, detail = (line.split("\t") + ["", ""])[:3]
    print(f"{part:<48} {status:<8} {detail}")
EOF
cat "$OUT/summary.txt"
echo "gpu_check: files in $OUT" >&2
! grep -q "	FAILED	" "$STATUS"
