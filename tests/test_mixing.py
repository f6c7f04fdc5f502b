"""Mixing general data into the fine-tuning stages (--mix_data / --mix_ratio): the share, the determinism, and a
resumed run that sees the same batches as an uninterrupted one."""
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import save_tiny
from dataset.mixing import MixedRows
from trainer import run
from trainer.data import TrainData, epoch_batches
from trainer.stages import LORA, LoRA

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--num_workers", "0"]


class Rows(list):
    """A stand-in dataset: item i is the string name of the row."""

    def __init__(self, prefix, n):
        super().__init__(f"{prefix}{i}" for i in range(n))


def test_ratio_is_the_share_of_each_epochs_rows():
    for n_main, n_mix, ratio in [(70, 500, 0.3), (40, 7, 0.5), (9, 1000, 0.1)]:
        mixed = MixedRows(Rows("main", n_main), Rows("mix", n_mix), ratio, seed=1)
        items = [mixed[i] for i in range(len(mixed))]
        assert items[:n_main] == list(Rows("main", n_main))  # every main row, once
        share = sum(x.startswith("mix") for x in items) / len(items)
        assert abs(share - ratio) <= 1 / len(items)  # rounding to whole rows only


def test_choice_is_seeded_covers_the_mix_file_and_changes_per_epoch():
    def epoch_rows(seed, epoch):
        mixed = MixedRows(Rows("main", 30), Rows("mix", 25), 0.4, seed=seed)  # 20 mix rows per epoch
        mixed.set_epoch(epoch)
        return mixed.mix_rows

    assert epoch_rows(3, 0) == epoch_rows(3, 0) and epoch_rows(3, 2) == epoch_rows(3, 2)
    assert epoch_rows(3, 0) != epoch_rows(4, 0)
    assert epoch_rows(3, 0) != epoch_rows(3, 1)
    first_25 = (epoch_rows(3, 0) + epoch_rows(3, 1))[:25]
    assert sorted(first_25) == list(range(25))  # every mix row is used before any repeats
    assert len(set(epoch_rows(3, 0))) == 20


def test_bad_ratio_and_empty_mix_are_refused():
    with pytest.raises(ValueError, match="ratio"):
        MixedRows(Rows("main", 3), Rows("mix", 3), 1.0, seed=0)
    with pytest.raises(ValueError, match="no rows"):
        MixedRows(Rows("main", 3), Rows("mix", 0), 0.3, seed=0)


def test_resumed_epoch_gets_the_same_batches(demo, tok, tmp_path):
    """The batches the trainer draws for an epoch, skipping the first k (a resume), are the tail of the
    uninterrupted epoch's batches, mix rows included, even after other epochs were drawn in between."""
    args = SimpleNamespace(data_path=demo["lora_identity"], max_seq_len=128, no_packing=False, cache_dir=tmp_path,
                           skip_bad_lines=False, streaming=False, seed=7, max_steps=0, num_workers=0, num_proc=1,
                           mix_data=demo["sft"], mix_ratio=0.3)
    info = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"))
    data = TrainData.build("sft", args, tok, info)
    lines = data.report()
    assert any(f"mixed in {demo['sft']}" in line and "30" in line for line in lines), lines

    def ids(epoch, skip):
        return [b["input_ids"].tolist() for b in data.micro_batches(epoch, 4, args.seed, info, skip)]

    full = ids(1, 0)
    ids(0, 0), ids(2, 3)  # other epochs drawn in between
    assert ids(1, 2) == full[2:]
    assert ids(0, 0) != full
    # the epoch's rows: all of the identity rows plus the share of sft rows asked for
    n_main = len(data.dataset.main)
    rows = [i for batch in epoch_batches(len(data.dataset), 4, 1, args.seed, info) for i in batch]
    assert sorted(rows) == list(range(len(data.dataset)))
    assert abs(sum(data.dataset.is_mix(i) for i in rows) / len(rows) - 0.3) <= 1 / len(rows)
    assert n_main < len(rows)


class InterruptedLoRA(LoRA):
    """The LoRA stage, stopped (as by Ctrl-C) before the optimizer step `stop_at`."""
    stop_at = 7  # in the second epoch

    def on_step(self, step, total_steps):
        if step == self.stop_at:
            raise KeyboardInterrupt


def test_resume_with_mixing_equals_the_uninterrupted_run(demo, tok, tmp_path, capsys):
    base = save_tiny(tmp_path / "base_64", tok, initializer_range=0.1)
    identity = tmp_path / "identity.jsonl"
    identity.write_text("".join(demo["lora_identity"].read_text(encoding="utf-8").splitlines(True)[:20]), "utf-8")
    common = [str(a) for a in [*TINY, "--data_path", identity, "--from_weight", base, "--cache_dir", tmp_path / "cache",
              "--mix_data", demo["sft"], "--mix_ratio", "0.5", "--epochs", "3", "--batch_size", "2",
              "--learning_rate", "1e-2", "--save_interval", "1", "--lora_name", "ident"]]
    run(LORA, [*common, "--out_dir", tmp_path / "full"])
    with pytest.raises(SystemExit) as stopped:
        run(InterruptedLoRA(), [*common, "--out_dir", tmp_path / "resumed"])
    assert stopped.value.code == 130
    capsys.readouterr()
    run(LORA, [*common, "--out_dir", tmp_path / "resumed", "--resume"])
    assert f"(step {InterruptedLoRA.stop_at})" in capsys.readouterr().err

    def adapter(out):
        return load_file(str(out / "lora" / "ident_64" / "adapter_model.safetensors"))

    full, resumed = adapter(tmp_path / "full"), adapter(tmp_path / "resumed")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    no_mix = [a for a in common if a not in ("--mix_data", str(demo["sft"]), "--mix_ratio", "0.5")]
    run(LORA, [*no_mix, "--out_dir", tmp_path / "plain"])
    plain = adapter(tmp_path / "plain")
    assert any(not torch.equal(full[k], plain[k]) for k in full)  # the mix did change what was trained
