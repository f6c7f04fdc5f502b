"""--recipe fast and its levers: the warm-up/stable/decay schedule, the embedding's own learning rate, how a recipe's
flags rank against --config and the command line, and time_to_loss.py's ablation rows."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from configs import load_recipe, recipe_flags
from conftest import tiny_config
from model import MiniMindForCausalLM
from trainer import FULL_SFT, PRETRAIN, run
from trainer.args import base_parser, parse_args
from trainer.loop import learning_rate
from trainer.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--num_workers", "0"]


def test_wsd_schedule_is_flat_then_decays_linearly():
    lr = [learning_rate(s, 10, 1.0, 2, schedule="wsd", decay_frac=0.4, min_ratio=0.0) for s in range(10)]
    # 2 warm-up steps, 4 more at the peak, then the last 4 steps (40%) fall linearly and the last one is at the floor
    assert lr == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    floor = [learning_rate(s, 10, 2.0, 0, schedule="wsd", decay_frac=0.5, min_ratio=0.1) for s in (4, 5, 9)]
    assert floor == pytest.approx([2.0, 0.2 + 1.8 * 0.8, 0.2])
    # the cosine keeps MiniMind's shape; its floor is the same --min_lr_ratio
    assert learning_rate(50, 100, 1.0, 0) == pytest.approx(0.6)
    assert learning_rate(99, 100, 1.0, 0, min_ratio=0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    for bad in (["--decay_frac", "0"], ["--decay_frac", "1.5"], ["--min_lr_ratio", "-0.1"]):
        with pytest.raises(SystemExit):
            parse_args(PRETRAIN, [*TINY, *bad])


def test_embedding_gets_its_own_learning_rate():
    model = MiniMindForCausalLM(tiny_config())
    args = parse_args(PRETRAIN, [*TINY, "--optimizer", "muon", "--learning_rate", "1e-3", "--embed_lr", "5e-3"])
    groups = build_optimizer(model, args, torch.device("cpu")).optimizers["adamw"].param_groups
    by_lr = {g["peak_lr"]: g["params"] for g in groups}
    assert set(by_lr) == {1e-3, 5e-3}
    assert len(by_lr[5e-3]) == 1 and by_lr[5e-3][0] is model.model.embed_tokens.weight
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: the head moves with it
    assert all(p.ndim == 1 for p in by_lr[1e-3])  # the norms
    unset = build_optimizer(model, parse_args(PRETRAIN, [*TINY, "--learning_rate", "1e-3"]), torch.device("cpu"))
    assert [g["peak_lr"] for g in unset.optimizers["adamw"].param_groups] == [1e-3]


def test_recipe_sets_defaults_that_config_and_flags_override(tmp_path):
    fast = recipe_flags(load_recipe("fast"))
    args = parse_args(PRETRAIN, ["--recipe", "fast"])
    assert {k: getattr(args, k) for k in fast} == fast
    defaults = base_parser(PRETRAIN)
    assert any(defaults.get_default(k) != v for k, v in fast.items())  # the recipe changes something
    flag, value = next((k, v) for k, v in fast.items() if isinstance(v, float))
    assert getattr(parse_args(PRETRAIN, ["--recipe", "fast", f"--{flag}", str(value * 2)]), flag) == value * 2
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({flag: value / 2}))
    assert getattr(parse_args(PRETRAIN, ["--recipe", "fast", "--config", str(config)]), flag) == value / 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"schedule": {"no_such_flag": 1}}))
    with pytest.raises(SystemExit):
        parse_args(PRETRAIN, ["--recipe", str(bad)])
    bad.write_text(yaml.safe_dump({"lr_schedule": "wsd"}))  # a flag outside any lever
    with pytest.raises(SystemExit):
        parse_args(PRETRAIN, ["--recipe", str(bad)])
    bad.write_text(yaml.safe_dump({"a": {"embed_lr": 1e-3}, "b": {"embed_lr": 2e-3}}))  # one flag in two levers
    with pytest.raises(SystemExit):
        parse_args(PRETRAIN, ["--recipe", str(bad)])
    config.write_text(yaml.safe_dump({"recipe": "fast"}))  # it would be read too late to apply
    with pytest.raises(SystemExit):
        parse_args(PRETRAIN, ["--config", str(config)])
    with pytest.raises(SystemExit):  # a recipe's rates are for a model built from scratch
        parse_args(FULL_SFT, ["--recipe", "fast"])


def _time_to_loss():
    spec = importlib.util.spec_from_file_location("time_to_loss", ROOT / "scripts" / "time_to_loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_rows_each_drop_one_lever(tmp_path):
    levers = load_recipe("fast")
    rows = _time_to_loss().ablations(tmp_path)
    assert set(rows) == {f"fast-no_{lever}" for lever in levers}
    for lever in levers:
        path = Path(rows[f"fast-no_{lever}"][1][-1])
        args = parse_args(PRETRAIN, ["--recipe", str(path)])
        defaults = base_parser(PRETRAIN)
        for flag, value in levers[lever].items():  # the removed lever's flags are back at their defaults
            assert getattr(args, flag) == defaults.get_default(flag)
        for other in set(levers) - {lever}:  # every other lever still applies
            assert all(getattr(args, f) == v for f, v in levers[other].items())


def test_time_to_loss_runs_recipes_for_equal_steps(demo, tmp_path, monkeypatch):
    """A tiny end-to-end run: MiniMind's row and the fast recipe for the same steps, with the table's ratios."""
    module = _time_to_loss()
    monkeypatch.setattr(sys, "argv", ["time_to_loss.py"])
    module.main(["--data", str(demo["pretrain"]), "--config", "tiny", "--steps", "6", "--evals", "3", "--recipes",
                 "minimind,fast", "--max_seq_len", "64", "--batch_size", "4", "--val_every", "10", "--eval_rows", "4",
                 "--device", "cpu", "--out_dir", str(tmp_path)])
    result = json.loads((tmp_path / "time_to_loss.json").read_text())["results"]
    assert set(result) == {"minimind", "fast"}
    for r in result.values():
        assert [p["step"] for p in r["curve"]] == [2, 4, 6] and r["steps"] == 6
        assert r["bpb_at_baseline_steps"] == r["curve"][-1]["val_bpb"]
    table = (tmp_path / "time_to_loss.md").read_text()
    assert "| fast: --recipe fast" in table and "6 steps per recipe" in table
    # the fast row really ran the recipe's flags
    logged = json.loads((tmp_path / "runs" / "runs" / "fast" / "args.json").read_text())
    assert all(logged.get(k) == v for k, v in recipe_flags(load_recipe("fast")).items())


def test_muon_newton_schulz_steps_flag_reaches_the_optimizer():
    model = MiniMindForCausalLM(tiny_config())
    for steps in (3, 5):
        args = parse_args(PRETRAIN, [*TINY, "--optimizer", "muon", "--muon_ns_steps", str(steps)])
        assert build_optimizer(model, args, torch.device("cpu")).optimizers["muon"].param_groups[0]["ns_steps"] == steps


def test_resume_refuses_other_learning_rates(demo, tmp_path):
    """torch would either fail on another number of parameter groups (--embed_lr on or off) or quietly restore the
    checkpoint's rates; the run says which flags to keep instead."""
    common = [*TINY, "--data_path", demo["pretrain"], "--out_dir", tmp_path, "--batch_size", "4", "--accumulation_steps",
              "1", "--max_steps", "4", "--cache_dir", tmp_path / "cache", "--embed_lr", "2e-3"]
    run(PRETRAIN, [*common, "--save_interval", "2"])
    ckpts = tmp_path / "runs" / "pretrain_64" / "checkpoints"
    (ckpts / "latest").write_text("step_0000002")
    for changed in (["--embed_lr", "3e-3"], ["--learning_rate", "1e-3"]):
        with pytest.raises(SystemExit) as e:
            run(PRETRAIN, [*common, *changed, "--resume"])
        assert e.value.code == 2
    run(PRETRAIN, [*common, "--resume"])  # the same flags resume
