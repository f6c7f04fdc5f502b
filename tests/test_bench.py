"""Smoke test of scripts/bench.py: a tiny run with --json prints every section. No timing is checked."""
import json
import subprocess
import sys

from conftest import ROOT

CONVERSATIONS = [
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"}],
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}, {"role": "assistant", "content": "Green."}],
]


def test_bench_quick_json(tmp_path):
    sft = tmp_path / "sft.jsonl"
    lines = [json.dumps({"conversations": CONVERSATIONS[i % len(CONVERSATIONS)]}, ensure_ascii=False) for i in range(12)]
    sft.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", "--threads", "1",
           "--gen_batches", "1,2", "--sft_data", str(sft), "--cache_dir", str(tmp_path / "cache"), "--rollout",
           "--grpo_memory"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)

    assert {"config", "peak", "train", "generation", "packing", "notes"} <= result.keys()
    assert result["config"]["preset"] == "tiny" and result["config"]["device"] == "cpu"
    dtypes = result["config"]["dtypes"]
    assert dtypes[0] == "float32" and set(dtypes) <= {"float32", "bfloat16"}
    assert set(result["peak"]) >= {"float32"}
    for dt in dtypes:
        train = result["train"][dt]
        for name in ("ours", "baseline"):
            m = train[name]
            assert {"params", "step_ms", "tokens_per_s", "tflops", "share_of_peak", "step_mem_mib"} <= m.keys()
            assert m["tokens_per_s"] > 0
        assert train["ours"]["params"] == train["baseline"]["params"]  # the baseline really has our shape
        assert train["ratio"] > 0
        gen = result["generation"][dt]
        assert set(gen) == {"b1", "b2"}
        assert all(gen[b]["ours"] > 0 and gen[b]["baseline"] > 0 and gen[b]["ratio"] > 0 for b in gen)

        rollout = result["rollout"]["tiny"][dt]["G2"]  # --quick: the tiny preset, G = 2
        assert rollout["engine"] > 0 and rollout["generate"] > 0 and rollout["ratio"] > 0
        mem = result["grpo_memory"][f"tiny {dt}"]["G2"]
        assert set(mem) == {"engine", "generate"} and all(v is None or v >= 0 for v in mem.values())

    (pack,) = result["packing"]
    for layout in ("packed", "unpacked"):
        assert {"useful_tokens_per_s", "positions_per_s", "useful_share", "rows"} <= pack[layout].keys()
        assert 0 < pack[layout]["useful_share"] <= pack[layout]["real_share"] <= 1  # loss-bearing tokens are real
    assert pack["packed"]["rows"] < pack["unpacked"]["rows"]  # short conversations share rows when packed
    assert {"ceiling_tokens_per_s", "packed_pct_of_ceiling", "packed_speedup"} <= pack.keys()


def test_bench_missing_sft_data_is_a_note(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", "--threads", "1",
           "--skip", "peak,train,generation", "--sft_data", str(tmp_path / "absent.jsonl")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["packing"] == [] and any("not found" in note for note in result["notes"])


def test_bench_grad_ckpt_reports_memory_and_time_with_and_without():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--grad_ckpt", "--quick", "--json", "--threads", "1",
           "--dtype", "float32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["config"]["preset"] == "tiny" and result["dtype"] == "float32"
    for mode in ("without", "with"):
        assert result[mode]["step_ms"] > 0 and result[mode]["step_mem_mib"] is not None
    assert result["time_cost"] == round(result["with"]["step_ms"] / result["without"]["step_ms"] - 1, 4)


def test_bench_attention_times_both_precisions_and_names_the_models_choice():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--attention", "--quick", "--json", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    (row,) = result["attention"]  # --quick: one row length, 32 positions
    assert row["seq_len"] == 32 and row["batch_size"] == 128 and row["bf16_ms"] > 0 and row["fp32_ms"] > 0
    assert row["model"] == "float32"  # a CPU row of <= 256 positions trains its attention in fp32
    assert result["heads"] == [4, 2, 16]  # the tiny preset's 4 query / 2 kv heads of 16


def test_bench_server_reports_sequential_and_concurrent_rates():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--server", "tiny", "--json", "--threads", "1",
           "--server_clients", "1,3", "--server_tokens", "4", "--server_reps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(proc.stdout)["server"]
    assert result["preset"] == "tiny" and set(result["clients"]) == {"1", "3"}
    for n, r in result["clients"].items():
        assert r["tokens"] == 4 * int(n)  # every request ran to max_tokens
        assert r["sequential_tok_s"] > 0 and r["concurrent_tok_s"] > 0 and r["ratio"] > 0


def test_bench_loss_head_times_the_logits_and_the_fused_paths():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--loss_head", "--quick", "--json", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["positions"] == 256 and result["vocab_size"] == 6400
    assert [row["dtype"] for row in result["loss_head"]] == ["float32", "bfloat16"]
    assert all(row["logits_ms"] > 0 and row["fused_ms"] > 0 for row in result["loss_head"])


def test_bench_rollout_loss_times_padded_rows_against_a_shared_prompt():
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--rollout_loss", "--quick", "--json", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    (row,) = result["rollout_loss"]
    assert row["G"] == 2 and row["padded_ms"] > 0 and row["shared_ms"] > 0
    # one row per prompt instead of G: the prompt's positions are counted once
    assert row["shared_positions"] < row["padded_positions"]
