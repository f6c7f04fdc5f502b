import contextlib
import io
import os
import runpy
from pathlib import Path

import pytest
import torch

from dataset.demo import make_demo_data
from model import MiniMindConfig, MiniMindForCausalLM
from trainer.modelio import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# The suite runs in one worker process per core (pytest-xdist, `-n auto` in pyproject.toml): each worker uses one
# intra-op thread, and so does each command a test starts (unless OMP_NUM_THREADS says otherwise). Tiny models gain
# nothing from a second thread, the threads of two workers fighting over two cores slow both several times over, and
# one thread gives the same float reductions, so the same samples for a seed, on every machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

DATA_KIT = ROOT.parent / "shared" / "data"  # the real-data kit beside a CI checkout; absent in a user's clone


def command(name: str) -> dict:
    """The globals of the command scripts/<name>.py, executed as a file (not imported as a module) without running
    its main: for tests that call its build_parser() or main() in-process."""
    return runpy.run_path(str(ROOT / "scripts" / f"{name}.py"), run_name=f"command_{name}")


def run_command(name: str, argv, capsys=None) -> tuple[int, str, str]:
    """Run `python scripts/<name>.py ARGV` in this process: (exit code, stdout, stderr)."""
    argv = [str(a) for a in argv]
    main = command(name)["main"]
    if capsys is not None:
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return (code or 0), out, err
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return (code or 0), out.getvalue(), err.getvalue()


def tiny_config(**overrides) -> MiniMindConfig:
    values = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    values.update(overrides)
    return MiniMindConfig(**values)


def save_tiny(folder, tok, seed=0, **overrides):
    """A random tiny model saved with `tok` as a self-contained HF folder."""
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(tiny_config(**overrides))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return MiniMindForCausalLM(tiny_config()).eval()


def skip_unless_required(reason: str, variable: str):
    """Skip a test whose tool or data is missing, or fail it where CI promises to have it: `.ci/run` sets
    REQUIRE_KIT=1, REQUIRE_EVAL=1 and REQUIRE_BROWSER=1, so a missing kit, lm-eval or Chromium cannot pass as a skip."""
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason} ({variable}=1: this must not be skipped here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def data_kit():
    if not (DATA_KIT / "pretrain.jsonl").exists():
        skip_unless_required(f"needs the data kit at {DATA_KIT} (present in CI, not in a user's clone)", "REQUIRE_KIT")
    return DATA_KIT


# Module-scoped: each test file gets its own demo corpus, tokenized-data cache and tokenizer.
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The project's demo corpus at a tenth of its size: {name: path} for every format."""
    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=0, scale=0.1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()
