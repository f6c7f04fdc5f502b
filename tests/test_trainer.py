"""The shared training core, exercised through the real entry points on the tiny preset."""
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, save_tiny
from trainer import PRETRAIN, FULL_SFT, run
from trainer.args import base_parser
from trainer.loop import learning_rate
from trainer.stages import Pretrain

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--num_workers", "0"]


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def metrics(out, name):
    return [json.loads(l) for l in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def cli(*args, env=None, timeout=600):
    """Run a command in its own process group; on timeout the whole group (torchrun's workers too) is killed."""
    cmd = [sys.executable, *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_learning_rate_schedule():
    assert learning_rate(0, 100, 1e-3, 0) == pytest.approx(1.1e-3)  # MiniMind's cosine: lr/10 + lr/2 (1 + cos 0)
    assert learning_rate(100, 100, 1e-3, 0) == pytest.approx(1e-4)
    assert learning_rate(0, 100, 1e-3, 10) == pytest.approx(1e-4)  # warm-up starts at lr/warmup
    assert learning_rate(9, 100, 1e-3, 10) == pytest.approx(1e-3)


def test_help_explains_every_flag():
    parser = base_parser(PRETRAIN)
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help text"
    for flag in ["--epochs", "--batch_size", "--learning_rate", "--device", "--dtype", "--use_wandb", "--wandb_project",
                 "--num_workers", "--accumulation_steps", "--grad_clip", "--warmup_iters", "--log_interval",
                 "--save_interval", "--dim", "--n_layers", "--max_seq_len", "--use_moe", "--data_path", "--out_dir",
                 "--config", "--resume", "--no_packing", "--skip_bad_lines"]:
        assert flag in parser._option_string_actions
    assert "--from_weight" in base_parser(FULL_SFT)._option_string_actions


def test_config_file_values_are_overridden_by_flags(tmp_path):
    from trainer.args import parse_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text("dim: 96\nn_layers: 3\nbatch_size: 7\n")
    args = parse_args(PRETRAIN, ["--config", str(cfg), "--n_layers", "5"])
    assert (args.dim, args.n_layers, args.batch_size) == (96, 5, 7)
    cfg.write_text("dim: 96\nbogus_key: 1\n")
    with pytest.raises(SystemExit):
        parse_args(PRETRAIN, ["--config", str(cfg)])


def test_pretrain_loss_falls_on_real_kit_text(tmp_path, data_kit):
    lines = (data_kit / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()
    sample = tmp_path / "pretrain.jsonl"
    sample.write_text("\n".join(lines[::40]) + "\n", encoding="utf-8")  # every source, ~330 documents
    run(PRETRAIN, [*TINY, "--data_path", sample, "--out_dir", tmp_path / "out", "--batch_size", "8",
                   "--accumulation_steps", "1", "--learning_rate", "3e-3", "--log_interval", "5", "--epochs", "2",
                   "--max_steps", "60", "--save_interval", "0", "--cache_dir", tmp_path / "cache"])
    rows = metrics(tmp_path / "out", "pretrain_64")
    assert rows[-1]["step"] == 60
    assert rows[-1]["loss"] < min(rows[0]["loss"] - 1.0, math.log(6400) - 1.5), rows  # uniform guess: ln 6400 = 8.76
    assert (tmp_path / "out" / "pretrain_64" / "model.safetensors").exists()
    assert (tmp_path / "out" / "runs" / "pretrain_64" / "loss.png").exists()


def _pretrain_args(demo, out, *extra):
    return [*TINY, "--data_path", demo["pretrain"], "--out_dir", out, "--batch_size", "4", "--accumulation_steps", "2",
            "--learning_rate", "2e-3", "--log_interval", "1", "--epochs", "2", "--cache_dir", out.parent / "cache",
            "--dropout", "0.1", *extra]


def test_accumulation_split_gives_same_step(demo, tmp_path):
    """Two micro-batches of 4 rows and one of 8 rows give the same update: the loss is normalised by the
    items of the whole step, not per micro-batch."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*TINY, "--data_path", demo["sft"], "--from_weight", "none", "--learning_rate", "1e-3",
              "--max_steps", "3", "--save_interval", "0", "--cache_dir", tmp_path / "cache", "--epochs", "1"]
    run(FULL_SFT, [*common, "--out_dir", a, "--batch_size", "4", "--accumulation_steps", "2"])
    run(FULL_SFT, [*common, "--out_dir", b, "--batch_size", "8", "--accumulation_steps", "1"])
    wa, wb = weights(a / "full_sft_64"), weights(b / "full_sft_64")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


# The same stage and flags as train_pretrain.py, killed (SIGKILL, no clean-up) in the middle of a known step:
# after its first micro-batch's backward pass, so that gradients are half accumulated.
KILLED_AT_STEP = """
import os, signal, sys
from trainer import run
from trainer.stages import Pretrain

class KilledInStep(Pretrain):
    def on_step(self, step, total_steps):
        self.step = step + 1

    def loss(self, model, batch, args):
        if self.step == int(os.environ["KILL_AT_STEP"]) and getattr(self, "hit", False):
            os.kill(os.getpid(), signal.SIGKILL)
        self.hit = self.step == int(os.environ["KILL_AT_STEP"])
        return super().loss(model, batch, args)

run(KilledInStep(), sys.argv[1:])
"""


def test_sigkill_then_resume_is_bit_identical(demo, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    # all runs as separate processes with one thread, so float reductions are the same in each
    assert cli("train_pretrain.py", *_pretrain_args(demo, full, "--save_interval", "4")).returncode == 0
    rows = metrics(full, "pretrain_64")
    total = rows[-1]["step"]
    assert total >= 12

    crash = cli("-c", KILLED_AT_STEP, *_pretrain_args(demo, killed, "--save_interval", "4"), env={"KILL_AT_STEP": "7"})
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    run_dir = killed / "runs" / "pretrain_64"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_0000004"
    assert [r["step"] for r in metrics(killed, "pretrain_64")] == [1, 2, 3, 4, 5, 6]  # 5, 6: after the checkpoint

    resumed = cli("train_pretrain.py", *_pretrain_args(demo, killed, "--save_interval", "4", "--resume"))
    assert resumed.returncode == 0 and "(step 4)" in resumed.stderr, resumed.stderr
    wa, wb = weights(full / "pretrain_64"), weights(killed / "pretrain_64")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # steps 5 and 6 logged once, by the resumed run, with the uninterrupted run's numbers
    again = metrics(killed, "pretrain_64")
    assert [r["step"] for r in again] == list(range(1, total + 1))
    assert [(r["loss"], r["grad_norm"], r["lr"]) for r in again] == [(r["loss"], r["grad_norm"], r["lr"]) for r in rows]


@pytest.mark.parametrize("optimizer, use_moe", [("adamw", False), ("muon", False), ("adamw", True)],
                         ids=["adamw", "muon", "moe"])
def test_torchrun_two_processes_match_one(demo, tmp_path, tok, optimizer, use_moe):
    # MoE starts from a saved model without the balance loss: that loss is a mean over each micro-batch's
    # sequences weighted by the micro-batch's items, so splitting a batch over ranks re-weights it (measured:
    # losses 3.7e-4 apart after 6 steps with it, 1e-6 without); routing, idle experts and DDP are what is tested
    start = ["--from_weight", save_tiny(tmp_path / "moe_start", tok, use_moe=True, aux_loss_alpha=0.0)] if use_moe else []
    common = [*start, "--optimizer", optimizer, "--use_moe", str(use_moe), "--data_path", demo["pretrain"], "--config", "tiny",
              "--device", "cpu", "--dtype", "float32", "--quiet",
              "--learning_rate", "2e-3", "--log_interval", "1", "--max_steps", "6", "--save_interval", "0",
              "--accumulation_steps", "1", "--cache_dir", tmp_path / "cache"]
    one = cli("train_pretrain.py", *common, "--out_dir", tmp_path / "one", "--batch_size", "4")
    assert one.returncode == 0, one.stderr
    two = cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train_pretrain.py",
              *common, "--out_dir", tmp_path / "two", "--batch_size", "2", timeout=180)
    assert two.returncode == 0, two.stderr[-3000:]
    name = "pretrain_64_moe" if use_moe else "pretrain_64"
    losses_one = [r["loss"] for r in metrics(tmp_path / "one", name)]
    losses_two = [r["loss"] for r in metrics(tmp_path / "two", name)]
    assert len(losses_one) == len(losses_two) == 6
    # Muon orthogonalises in bf16 (torch.optim.Muon) and Newton–Schulz amplifies the weakest directions ~500x, so
    # the last-bit differences of a 2-rank gradient sum show up in single weights (measured 1.1e-3 after 6 steps)
    # while the losses still agree to 3e-5
    loss_tol, weight_tol = (1e-5, 1e-5) if optimizer == "adamw" else (2e-4, 5e-3)
    if use_moe:  # AdamW's first steps scale tiny gradient differences of rarely routed experts up (measured 3.3e-5)
        weight_tol = 2e-4
    assert max(abs(x - y) for x, y in zip(losses_one, losses_two)) <= loss_tol
    wa, wb = weights(tmp_path / "one" / name), weights(tmp_path / "two" / name)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < weight_tol
    if use_moe:  # the routers trained (through the routing weights), on both ranks alike
        w0 = weights(start[1])
        routers = [k for k in w0 if k.endswith("mlp.gate.weight")]
        assert routers and all((wb[k] - w0[k]).abs().max() > 1e-4 for k in routers)


class NaNAtStep3(Pretrain):
    def __init__(self):
        self.calls = 0

    def loss(self, model, batch, args):
        loss, sums = super().loss(model, batch, args)
        self.calls += 1
        return (loss * float("nan") if self.calls == 3 else loss), sums


def test_nonfinite_loss_stops_with_clear_message_and_keeps_checkpoint(demo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(NaNAtStep3(), [*TINY, "--data_path", demo["pretrain"], "--out_dir", tmp_path, "--batch_size", "4",
                           "--accumulation_steps", "1", "--save_interval", "1", "--cache_dir", tmp_path / "cache"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "step 3" in err and "step_0000002" in err
    ckpt = tmp_path / "runs" / "pretrain_64" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step_0000002"
    assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "step_0000002" / "model.safetensors")).values())


@pytest.mark.parametrize("line, expected", [
    ('{"text": "ok"}\n{"text": ', "bad.jsonl:2"),
    ('{"text": "ok"}\n{"txt": "x"}', "bad.jsonl:2: text"),
])
def test_bad_data_gives_one_clear_line_no_traceback(tmp_path, line, expected):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n")
    res = cli("train_pretrain.py", *TINY, "--data_path", bad, "--out_dir", tmp_path / "o", "--cache_dir", tmp_path / "c")
    assert res.returncode == 2
    assert expected in res.stderr and "Traceback" not in res.stderr


def test_missing_start_checkpoint_names_the_command(tmp_path, demo):
    res = cli("train_full_sft.py", *TINY, "--data_path", demo["sft"], "--out_dir", tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "python train_pretrain.py" in res.stderr and "pretrain_64" in res.stderr


def test_compile_flag_trains_like_eager(demo, tmp_path):
    """--compile changes how the step runs, not what it computes."""
    common = [*TINY, "--data_path", demo["pretrain"], "--learning_rate", "2e-3", "--log_interval", "1",
              "--max_steps", "3", "--save_interval", "0", "--batch_size", "4", "--accumulation_steps", "1",
              "--cache_dir", tmp_path / "cache"]
    run(PRETRAIN, [*common, "--out_dir", tmp_path / "eager"])
    run(PRETRAIN, [*common, "--out_dir", tmp_path / "compiled", "--compile"])
    eager, compiled = metrics(tmp_path / "eager", "pretrain_64"), metrics(tmp_path / "compiled", "pretrain_64")
    assert len(eager) == len(compiled) == 3
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_validation_during_training_logs_loss_bpb_and_training_time(demo, tmp_path):
    run(PRETRAIN, [*TINY, "--data_path", demo["pretrain"], "--out_dir", tmp_path, "--batch_size", "8",
                   "--accumulation_steps", "1", "--learning_rate", "3e-3", "--max_steps", "12", "--epochs", "3", "--log_interval", "3",
                   "--save_interval", "0", "--eval_data", demo["pretrain"], "--eval_interval", "4", "--eval_rows", "4",
                   "--cache_dir", tmp_path / "cache"])
    rows = metrics(tmp_path, "pretrain_64")
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [4, 8, 12]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert all(r["val_bpb"] > 0 for r in val)
    clock = [r["train_s"] for r in rows]
    assert clock == sorted(clock) and clock[-1] <= rows[-1]["elapsed_s"]
