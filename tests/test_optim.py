"""--optimizer muon: which parameters Muon takes, resume, and that a tiny model learns with it."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from model import MiniMindForCausalLM
from trainer import FULL_SFT, PRETRAIN, run
from trainer.args import parse_args
from trainer.optim import build_optimizer

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--num_workers", "0"]


@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_muon_takes_block_matrices_and_adamw_the_rest(use_moe):
    model = MiniMindForCausalLM(tiny_config(use_moe=use_moe))
    args = parse_args(PRETRAIN, [*TINY, "--optimizer", "muon", "--learning_rate", "1e-3", "--muon_lr", "0.05"])
    opt = build_optimizer(model, args, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.optimizers["muon"].param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt.optimizers["adamw"].param_groups for p in g["params"]}
    assert muon | adamw == set(names.values()) and not muon & adamw
    assert all(dict(model.named_parameters())[n].ndim == 2 and ".layers." in n for n in muon)
    assert all(dict(model.named_parameters())[n].ndim == 1 for n in adamw if "norm" in n)
    assert "model.embed_tokens.weight" in adamw  # tied with the LM head: stays with AdamW
    assert any("self_attn.q_proj" in n for n in muon) and any("down_proj" in n for n in muon)
    if use_moe:
        assert {n for n in adamw if n.endswith("mlp.gate.weight")} == {f"model.layers.{i}.mlp.gate.weight" for i in range(2)}
    assert {g["peak_lr"] for g in opt.optimizers["muon"].param_groups} == {0.05}
    assert {g["peak_lr"] for g in opt.optimizers["adamw"].param_groups} == {1e-3}
    # fine-tuning stages: Muon at the stage's learning rate, its update RMS matched to AdamW's
    args = parse_args(FULL_SFT, [*TINY, "--optimizer", "muon", "--learning_rate", "3e-5"])
    muon_group = build_optimizer(model, args, torch.device("cpu")).optimizers["muon"].param_groups[0]
    assert (muon_group["peak_lr"], muon_group["adjust_lr_fn"]) == (3e-5, "match_rms_adamw")
    # plain AdamW: everything in one optimizer
    args = parse_args(PRETRAIN, [*TINY])
    assert set(build_optimizer(model, args, torch.device("cpu")).optimizers) == {"adamw"}


def _args(demo, out, *extra):
    return [*TINY, "--data_path", demo["pretrain"], "--out_dir", out, "--batch_size", "4", "--accumulation_steps", "1",
            "--learning_rate", "2e-3", "--log_interval", "1", "--cache_dir", out.parent / "cache", "--optimizer", "muon",
            *extra]


def test_muon_resume_is_bit_identical(demo, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(PRETRAIN, _args(demo, full, "--max_steps", "6", "--save_interval", "3"))
    ckpts = full / "runs" / "pretrain_64" / "checkpoints"
    state = torch.load(ckpts / "step_0000003" / "trainer_state.pt", weights_only=True)
    assert set(state["optimizer"]) == {"adamw", "muon"}
    assert state["optimizer"]["muon"]["state"], "Muon's momentum buffers are in the checkpoint"

    # an interrupted run: only the step-3 checkpoint exists
    shutil.copytree(full / "runs", resumed / "runs")
    kept = resumed / "runs" / "pretrain_64" / "checkpoints"
    shutil.rmtree(kept / "step_0000006")
    (kept / "latest").write_text("step_0000003")
    run(PRETRAIN, _args(demo, resumed, "--max_steps", "6", "--save_interval", "3", "--resume"))
    a, b = load_file(str(full / "pretrain_64" / "model.safetensors")), load_file(str(resumed / "pretrain_64" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(SystemExit) as e:  # a checkpoint written by Muon cannot resume as AdamW
        run(PRETRAIN, [*_args(demo, resumed, "--max_steps", "6", "--resume"), "--optimizer", "adamw"])
    assert e.value.code == 2


def test_muon_does_the_learning_that_adamw_alone_does_not(demo, tmp_path):
    """At --learning_rate 1e-5 the AdamW share (embeddings, norms) barely moves the loss; Muon at --muon_lr 0.02
    trains the block matrices. The control is the same run with AdamW for everything: if Muon were not used (or
    fell back to AdamW's lr), both runs would look alike."""
    falls = {}
    for optimizer in ("muon", "adamw"):
        out = tmp_path / optimizer
        run(PRETRAIN, [*_args(demo, out, "--epochs", "2", "--save_interval", "0", "--log_interval", "4"),
                       "--optimizer", optimizer, "--learning_rate", "1e-5", "--muon_lr", "0.02"])
        rows = [json.loads(l) for l in (out / "runs" / "pretrain_64" / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(r["loss"]) for r in rows)
        falls[optimizer] = rows[0]["loss"] - rows[-1]["loss"]
    print(f"loss fall over 28 steps: muon {falls['muon']:.3f}, adamw alone {falls['adamw']:.3f}")
    assert falls["muon"] > 0.4 and falls["adamw"] < 0.15, falls  # measured: 0.68 and 0.04


def test_time_to_loss_interpolates_the_curves():
    from trainer.metrics import bpb_at, step_seconds, time_to_reach

    curve = [{"step": 10, "train_s": 10.0, "val_bpb": 3.0}, {"step": 20, "train_s": 20.0, "val_bpb": 2.0},
             {"step": 30, "train_s": 30.0, "val_bpb": 1.5}]
    assert time_to_reach(curve, 2.5) == pytest.approx(15.0)
    assert time_to_reach(curve, 3.5) == 10.0  # already below at the first evaluation
    assert time_to_reach(curve, 1.0) is None
    assert bpb_at(curve, 25.0) == pytest.approx(1.75)
    assert bpb_at(curve, 40.0) is None
    assert bpb_at(curve, 15, key="step") == pytest.approx(2.5) and bpb_at(curve, 30, key="step") == 1.5
    rows = [{"loss": 1.0, "train_s": t} for t in (5.0, 6.0, 7.0, 8.0, 8.5, 9.5, 10.5)]  # slow first steps skipped
    assert step_seconds(rows) == pytest.approx(1.0)
