"""What `eval_model.py` and `scripts/serve_openai_api.py` share: finding a trained model, loading it (with an
optional LoRA adapter), turning messages into a prompt and generating text, streamed or not.

Model lookup follows the training scripts' folder names: `--model_mode N` picks the stage, and the folder is
OUT_DIR/<stage>_<dim>[_moe]/ (e.g. out/full_sft_512); `--lora_name X` adds the peft adapter at
OUT_DIR/lora/X_<dim>[_moe]/; `--model_path DIR` loads any Hugging Face folder (MiniMind or Llama layout).
"""
import argparse
import threading
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from model import TOKENIZER_DIR  # importing `model` also registers MiniMind with the Auto classes
from trainer.modelio import MODEL_MODES


PRETRAIN_MODE = 0
THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"


class ModelNotFound(Exception):
    """A missing or unusable checkpoint, adapter or device; the message is one line meant for the user."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the description's layout and shows each flag's default (not "None"/"False": the help says it)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def str2bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("1", "true", "yes", "y", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def modes_help() -> str:
    return ", ".join(f"{n} {m.stage}" for n, m in MODEL_MODES.items())


def modes_table() -> str:
    """--model_mode values, one a line, for a --help epilog."""
    lines = [f"  {n}  {m.stage + '_<dim>':<16} {m.label}; made by {m.command}" for n, m in MODEL_MODES.items()]
    return "model modes (--model_mode N loads OUT_DIR/<stage>_<dim>[_moe]):\n" + "\n".join(lines)


def add_model_arguments(parser: argparse.ArgumentParser, multiple_paths: bool = False):
    """The model-selection flags both front ends accept."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_path", action="append" if multiple_paths else "store", default=None, metavar="DIR",
                   help="a Hugging Face model folder (MiniMind or Llama layout); overrides the --model_mode lookup"
                        + (" (repeat to serve several models; each one's id is its folder name)" if multiple_paths else ""))
    g.add_argument("--model_mode", type=int, default=1, choices=sorted(MODEL_MODES),
                   help="which trained stage to load from OUT_DIR/<stage>_<dim>[_moe]: " + modes_help())
    g.add_argument("--lora_name", default=None,
                   help="peft LoRA adapter applied on top of the model: a name resolved to OUT_DIR/lora/<name>_<dim>[_moe] "
                        "(e.g. lora_identity, lora_medical) or an adapter folder")
    g.add_argument("--out_dir", default="out", help="where the training scripts wrote their model folders")
    g.add_argument("--dim", type=int, default=512, help="model width; part of the folder name (out/full_sft_512)")
    g.add_argument("--n_layers", type=int, default=None,
                   help="expected number of layers (the folder's config.json is authoritative; a mismatch is reported)")
    g.add_argument("--use_moe", type=str2bool, nargs="?", const=True, default=False,
                   help="look for the mixture-of-experts folders (<stage>_<dim>_moe)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (CUDA, then MPS, then CPU)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight precision: auto = bfloat16 on CUDA (float16 if unsupported), float32 elsewhere")
    return g


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 512):
    g = parser.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.85, help="sampling temperature; 0 = greedy decoding")
    g.add_argument("--top_p", type=float, default=0.85, help="nucleus sampling: keep the smallest token set with this much probability")
    g.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help="upper limit on generated tokens per answer")
    g.add_argument("--repetition_penalty", type=float, default=1.0, help=">1 discourages repeating tokens (1 = off)")
    return g


def quiet_libraries():
    """For the command-line front ends: no progress bars, library warnings or deprecation notices."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for module in ("transformers", "peft", "torch"):
        warnings.filterwarnings("ignore", module=module)


# ---------------------------------------------------------------- finding checkpoints

def folder_name(stage: str, dim: int, use_moe: bool) -> str:
    return f"{stage}_{dim}{'_moe' if use_moe else ''}"


def _train_flags(dim: int, use_moe: bool, out_dir) -> str:
    flags = f" --dim {dim}" + (" --use_moe" if use_moe else "")
    return flags + (f" --out_dir {out_dir}" if str(out_dir) != "out" else "")


def resolve_model_path(model_path=None, model_mode: int = 1, out_dir="out", dim: int = 512, use_moe: bool = False) -> Path:
    """The folder to load: `model_path` when given, else OUT_DIR/<stage>_<dim>[_moe] for `model_mode`."""
    if model_path:
        path = Path(model_path)
        if not path.is_dir():
            raise ModelNotFound(f"{path} not found (--model_path must be a model folder)")
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path} is not a model folder (no config.json)")
        return path
    if model_mode not in MODEL_MODES:
        raise ModelNotFound(f"unknown --model_mode {model_mode} ({modes_help()})")
    mode = MODEL_MODES[model_mode]
    path = Path(out_dir) / folder_name(mode.stage, dim, use_moe)
    if not (path / "config.json").exists():
        raise ModelNotFound(f"{path} not found — produce it with: {mode.command}{_train_flags(dim, use_moe, out_dir)}")
    return path


def resolve_lora_path(lora_name, out_dir="out", dim: int = 512, use_moe: bool = False) -> Path | None:
    """None without a name; an adapter folder given directly; else OUT_DIR/lora/<name>_<dim>[_moe]."""
    if not lora_name:
        return None
    direct = Path(lora_name)
    if (direct / "adapter_config.json").exists():
        return direct
    path = Path(out_dir) / "lora" / folder_name(lora_name, dim, use_moe)
    if not (path / "adapter_config.json").exists():
        raise ModelNotFound(f"{path} not found — produce it with: python train_lora.py --lora_name {lora_name}"
                            f" --data_path data/{lora_name}.jsonl{_train_flags(dim, use_moe, out_dir)}")
    return path


# ---------------------------------------------------------------- loading

def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ModelNotFound(f"unknown --device {name!r} (cpu, cuda, cuda:N, mps or auto)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelNotFound(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(model_dir: Path):
    """The folder's own tokenizer when it has one, else the project's tokenizer in model/."""
    model_dir = Path(model_dir)
    has_own = (model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists()
    return AutoTokenizer.from_pretrained(model_dir if has_own else TOKENIZER_DIR)


def load_model(path, lora_path=None, device="cpu", dtype=torch.float32):
    """(model in eval mode on `device`, tokenizer). A LoRA adapter is merged into the weights for fast inference."""
    path = Path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ModelNotFound(f"cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if lora_path is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, Path(lora_path)).merge_and_unload()
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFound(f"LoRA adapter {lora_path} does not fit {path}: {first}") from None
    return model.to(device).eval(), load_tokenizer(path)


def describe(model, path, lora_path=None) -> str:
    params = sum(p.numel() for p in model.parameters()) / 1e6
    c = model.config
    lora = f" + LoRA {lora_path}" if lora_path else ""
    return (f"loaded {path}{lora}: {params:.2f}M parameters, {c.num_hidden_layers} layers, hidden size "
            f"{c.hidden_size}, on {model.device} ({str(model.dtype).removeprefix('torch.')})")


# ---------------------------------------------------------------- prompts

def build_prompt(tokenizer, messages, chat: bool = True) -> str:
    """Chat models get the ChatML template with the assistant turn opened; a pretrained model (chat=False)
    continues plain text: bos + the last message's content, no template."""
    if not messages:
        raise ValueError("no messages to build a prompt from")
    if not chat:
        return (tokenizer.bos_token or "") + messages[-1]["content"]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # a tokenizer without a template (e.g. a bare exported folder): write ChatML by hand
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def sampling_kwargs(temperature: float, top_p: float, repetition_penalty: float = 1.0) -> dict:
    """generate() arguments: temperature 0 (or top_p 0) means greedy decoding."""
    kwargs = {}
    if temperature > 0 and top_p > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=min(top_p, 1.0), top_k=0)
    else:
        kwargs.update(do_sample=False)
    if repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = repetition_penalty
    return kwargs


# ---------------------------------------------------------------- generation

class _StopWhenSet(StoppingCriteria):
    """Ends generation once the event is set (stop string seen, client gone, Ctrl-C)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _StopFilter:
    """Cuts streamed text at the first stop string, holding back a tail that could still become one."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.buffer += piece
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[:min(hits)], ""
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        out = self.buffer[:len(self.buffer) - hold]
        self.buffer = self.buffer[len(out):]
        return out

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class GenerationStream:
    """One answer, generated in a background thread. Iterate (once) to get text pieces as they are decoded;
    when the iteration ends, `text`, `prompt_tokens`, `completion_tokens` and `finish_reason` ('stop' |
    'length') are set. `close()` stops early and waits for the thread, keeping what was decoded so far; it is
    safe at any point, also after the end."""

    def __init__(self, model, tokenizer, prompt: str, *, max_new_tokens: int = 512, temperature: float = 0.0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, stop=()):
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        self.prompt_tokens = int(encoded["input_ids"].shape[1])
        self.completion_tokens = 0
        self.max_new_tokens = max_new_tokens
        self.finish_reason = None
        self.text = ""
        self._pieces = []
        self._eos_ids = _eos_ids(model, tokenizer)
        self._cancel = threading.Event()
        self._filter = _StopFilter([stop] if isinstance(stop, str) else list(stop or ()))
        self._streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._drained = False  # the streamer has delivered its end signal
        self._output, self._error = None, None
        kwargs = dict(input_ids=encoded["input_ids"].to(model.device),
                      attention_mask=encoded["attention_mask"].to(model.device),
                      max_new_tokens=max_new_tokens, streamer=self._streamer,
                      stopping_criteria=StoppingCriteriaList([_StopWhenSet(self._cancel)]),
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos_ids[0],
                      eos_token_id=self._eos_ids, **sampling_kwargs(temperature, top_p, repetition_penalty))
        self._thread = threading.Thread(target=self._run, args=(model, kwargs), daemon=True)
        self._thread.start()

    def _run(self, model, kwargs):
        try:
            with torch.inference_mode():
                self._output = model.generate(**kwargs)
        except BaseException as e:  # handed to the consumer thread, which re-raises it
            self._error = e
            self._streamer.end()  # unblock the iterator

    def cancel(self):
        """Ask the generation to stop after the current token."""
        self._cancel.set()

    def __iter__(self):
        if self._drained:
            return
        for piece in self._streamer:
            if self._filter.stopped:
                continue  # drain what the generator still decodes after a stop string
            out = self._filter.feed(piece)
            if self._filter.stopped:
                self.cancel()
            if out:
                self._pieces.append(out)
                yield out
        self._drained = True
        tail = "" if self._filter.stopped else self._filter.flush()
        if tail:
            self._pieces.append(tail)
            yield tail
        self._finish()
        if self._error is not None:
            raise self._error

    def close(self):
        """Stop early (if still running) and wait for the generation thread."""
        self.cancel()
        if not self._drained:
            for _ in self._streamer:
                pass
            self._drained = True
        self._finish()

    def _finish(self):
        self._thread.join()
        self.text = "".join(self._pieces)
        new = self._output[0, self.prompt_tokens:].tolist() if self._output is not None else []
        self.completion_tokens = len(new)
        ended = bool(new) and new[-1] in self._eos_ids
        truncated = self.completion_tokens >= self.max_new_tokens and not ended and not self._filter.stopped
        self.finish_reason = "length" if truncated else "stop"

    def run(self) -> str:
        """Generate to the end and return the whole text."""
        for _ in self:
            pass
        return self.text


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate(model, tokenizer, prompt: str, **kwargs) -> str:
    """The whole answer to a prompt (see GenerationStream for the keyword arguments)."""
    return GenerationStream(model, tokenizer, prompt, **kwargs).run()
