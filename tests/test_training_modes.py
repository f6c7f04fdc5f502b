"""What the README promises about training modes, each on the tiny preset: float16 (with its GradScaler) and
bfloat16 resumed bit-for-bit, mixture-of-experts training, --streaming, and --skip_nonfinite."""
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import save_tiny
from trainer import PRETRAIN, run
from trainer.args import parse_args
from trainer.stages import Pretrain

TINY = ["--config", "tiny", "--device", "cpu", "--quiet", "--num_workers", "0"]


def _args(demo, out, *extra):
    return [*TINY, "--data_path", demo["pretrain"], "--out_dir", out, "--batch_size", "4", "--accumulation_steps", "2",
            "--learning_rate", "2e-3", "--log_interval", "1", "--cache_dir", out.parent / "cache", *extra]


def _rows(out, name="pretrain_64"):
    return [json.loads(l) for l in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _trainer_state(out, step, name="pretrain_64"):
    return torch.load(out / "runs" / name / "checkpoints" / f"step_{step:07d}" / "trainer_state.pt", weights_only=True)


def _resume_from(full, resumed, step, name="pretrain_64"):
    """`resumed` becomes `full` as it was when killed right after the checkpoint at `step`."""
    shutil.copytree(full / "runs", resumed / "runs")
    ckpts = resumed / "runs" / name / "checkpoints"
    for later in ckpts.glob("step_*"):
        if int(later.name.split("_")[1]) > step:
            shutil.rmtree(later)
    (ckpts / "latest").write_text(f"step_{step:07d}")


class OverflowAtStep2(Pretrain):
    """Loss × 1e8 in the second step: its float16 gradients overflow, as a too-large loss scale makes them."""

    def on_step(self, step, total_steps):
        self.step = step

    def loss(self, model, batch, args):
        loss, sums = super().loss(model, batch, args)
        return (loss * 1e8 if self.step == 1 else loss), sums


def test_float16_overflow_is_skipped_by_the_scaler_and_resume_is_bit_identical(demo, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = ["--dtype", "float16", "--max_steps", "6", "--save_interval", "3"]
    run(OverflowAtStep2(), _args(demo, full, *common))
    rows = _rows(full)
    assert [r["step"] for r in rows] == list(range(1, 7)) and all(math.isfinite(r["loss"]) for r in rows)
    assert not math.isfinite(rows[1]["grad_norm"])  # the overflow happened
    scaler = _trainer_state(full, 3)["scaler"]
    assert scaler["scale"] == 65536.0 * scaler["backoff_factor"]  # one back-off from the initial scale, once
    assert scaler["_growth_tracker"] == 1  # steps since the overflow

    _resume_from(full, resumed, 3)
    run(OverflowAtStep2(), _args(demo, resumed, *common, "--resume"))
    a, b = _weights(full / "pretrain_64"), _weights(resumed / "pretrain_64")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _trainer_state(resumed, 6)["scaler"] == _trainer_state(full, 6)["scaler"]  # restored, not restarted
    assert [r["loss"] for r in _rows(resumed)] == [r["loss"] for r in rows]


def test_bfloat16_resume_is_bit_identical(demo, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = ["--dtype", "bfloat16", "--max_steps", "6", "--save_interval", "3", "--dropout", "0.1"]
    run(PRETRAIN, _args(demo, full, *common))
    _resume_from(full, resumed, 3)
    run(PRETRAIN, _args(demo, resumed, *common, "--resume"))
    a, b = _weights(full / "pretrain_64"), _weights(resumed / "pretrain_64")
    assert all(torch.equal(a[k], b[k]) for k in a)
    fp32 = tmp_path / "fp32"  # and bf16 autocast really ran: float32 gives other numbers
    run(PRETRAIN, _args(demo, fp32, "--dtype", "float32", "--max_steps", "1", "--save_interval", "0", "--dropout", "0.1"))
    # (at init the loss is ln(vocab) to 6 places in both; the gradient is not)
    assert _rows(fp32)[0]["grad_norm"] != _rows(full)[0]["grad_norm"]


# ---------------------------------------------------------------- mixture of experts

def _hand_aux_loss(router_logits, B, T, top_k, n_experts, alpha):
    """The balance loss from the routers' logits, one sequence and one expert at a time: per sequence, Σ_e
    (share of the sequence's top-k choices that went to e, × E / k) · (mean router probability of e)."""
    total = 0.0
    for logits in router_logits:  # one (B*T, E) tensor per layer
        probs = torch.softmax(logits.double(), dim=-1).view(B, T, n_experts)
        chosen = probs.topk(top_k, dim=-1).indices
        per_sequence = []
        for b in range(B):
            value = 0.0
            for e in range(n_experts):
                share = (chosen[b] == e).sum().item() / (T * top_k)
                value += share * n_experts * probs[b, :, e].mean().item()
            per_sequence.append(value)
        total += alpha * sum(per_sequence) / B
    return total


def test_moe_balance_loss_is_part_of_the_training_loss(demo, tok, cache):
    from dataset import PackedBatchCollator, build_dataset
    from model import MiniMindConfig, MiniMindForCausalLM

    torch.manual_seed(0)
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, use_moe=True)
    model = MiniMindForCausalLM(config).train()
    ds = build_dataset("pretrain", demo["pretrain"], tok, 128, cache_dir=cache)
    batch = PackedBatchCollator(tok.pad_token_id, 128)([ds[i] for i in range(3)])
    router_logits = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, o: router_logits.append(o.detach()))
             for layer in model.model.layers]
    stage, args = Pretrain(), parse_args(PRETRAIN, TINY)
    with torch.no_grad():
        loss, _ = stage.loss(model, batch, args)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              position_ids=batch["position_ids"]).logits
    ce = F.cross_entropy(logits.flatten(0, 1).double(), batch["labels"].flatten(), ignore_index=-100, reduction="sum")
    B, T = batch["input_ids"].shape
    aux = _hand_aux_loss(router_logits, B, T, config.num_experts_per_tok, config.n_routed_experts, config.aux_loss_alpha)
    assert aux > 0.1  # alpha 0.1 per layer × 2 layers × ~1 (balanced routing gives exactly 1)
    assert loss.item() == pytest.approx(ce.item() + aux * batch["num_items"], rel=1e-5)


def test_moe_training_moves_the_router_and_writes_the_moe_folder(demo, tmp_path, tok):
    start = save_tiny(tmp_path / "start", tok, use_moe=True)
    run(PRETRAIN, _args(demo, tmp_path / "out", "--dtype", "float32", "--use_moe", "--from_weight", start,
                        "--max_steps", "3", "--save_interval", "0"))
    out = tmp_path / "out" / "pretrain_64_moe"
    assert (out / "model.safetensors").exists() and json.loads((out / "config.json").read_text())["use_moe"]
    assert (tmp_path / "out" / "runs" / "pretrain_64_moe" / "metrics.jsonl").exists()
    before, after = _weights(start), _weights(out)
    routers = [k for k in before if k.endswith("mlp.gate.weight")]
    assert len(routers) == 2
    for k in routers:
        assert (after[k] - before[k]).abs().max() > 1e-4, k


# ---------------------------------------------------------------- streaming

def test_streaming_needs_max_steps(demo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run(PRETRAIN, _args(demo, tmp_path, "--streaming"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: --streaming needs --max_steps" in err and "Traceback" not in err


def test_streaming_trains_and_resume_skips_the_consumed_batches(demo, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = ["--dtype", "float32", "--streaming", "--max_steps", "6", "--save_interval", "3", "--dropout", "0.1"]
    run(PRETRAIN, _args(demo, full, *common))
    rows = _rows(full)
    assert [r["step"] for r in rows] == list(range(1, 7)) and rows[-1]["loss"] < rows[0]["loss"]
    _resume_from(full, resumed, 3)
    run(PRETRAIN, _args(demo, resumed, *common, "--resume"))
    a, b = _weights(full / "pretrain_64"), _weights(resumed / "pretrain_64")
    assert all(torch.equal(a[k], b[k]) for k in a)  # batches 1–6 of the stream, not 1–3 twice


# ---------------------------------------------------------------- --skip_nonfinite

class NaNAtStep3(Pretrain):
    """NaN loss in the third optimizer step; remembers the weights each step starts from."""

    def __init__(self):
        self.starts = []

    def on_step(self, step, total_steps):
        self.step = step
        self.starts.append(None)

    def loss(self, model, batch, args):
        if self.starts[-1] is None:
            self.starts[-1] = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss, sums = super().loss(model, batch, args)
        return (loss * float("nan") if self.step == 2 else loss), sums


def test_skip_nonfinite_skips_exactly_the_bad_step(demo, tmp_path, capsys):
    stage = NaNAtStep3()
    run(stage, _args(demo, tmp_path, "--dtype", "float32", "--max_steps", "5", "--save_interval", "0",
                     "--skip_nonfinite"))
    out = capsys.readouterr()
    assert (out.out + out.err).count("non-finite loss or gradient, step skipped") == 1
    assert "step 3: non-finite" in out.out + out.err
    starts = stage.starts  # the weights each of the 5 steps started from
    assert len(starts) == 5

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert same(starts[2], starts[3])  # step 3 changed nothing
    assert not same(starts[1], starts[2]) and not same(starts[3], starts[4])  # steps 2 and 4 did
    final = _weights(tmp_path / "pretrain_64")
    assert not torch.equal(final["model.norm.weight"], starts[4]["model.norm.weight"])  # and step 5
    assert all(torch.isfinite(t).all() for t in final.values())
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert "loss" not in rows[2] and all(math.isfinite(r["loss"]) for r in rows if r["step"] != 3)


def test_skip_nonfinite_under_float16_keeps_the_scaler_going(demo, tmp_path):
    """A skipped step had its gradients unscaled already: the scaler must close that step (and back off), or the
    next step's unscale fails."""
    stage = NaNAtStep3()
    run(stage, _args(demo, tmp_path, "--dtype", "float16", "--max_steps", "5", "--save_interval", "4", "--skip_nonfinite"))
    assert torch.equal(stage.starts[2]["model.norm.weight"], stage.starts[3]["model.norm.weight"])
    scaler = _trainer_state(tmp_path, 4)["scaler"]
    assert scaler["scale"] == 65536.0 * scaler["backoff_factor"] and scaler["_growth_tracker"] == 1
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3, 4, 5]
