"""Turning messages into a prompt and generating text from it, streamed or not, one answer or a batch."""
import threading

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .chat_format import THINKING_ON_PROMPT


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


def template_opens_thinking(tokenizer) -> bool:
    """Whether the tokenizer's chat template has the thinking switch (open_thinking=True opens a <think> block in the
    generation prompt). Older templates ignore it; models trained with them open the block themselves."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return False
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False,
                                           add_generation_prompt=True, open_thinking=True)
    return prompt.endswith(THINKING_ON_PROMPT)


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


class _StopWhenSet(StoppingCriteria):
    """Ends generation once the event is set (stop string seen, client gone, Ctrl-C)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _StopFilter:
    """The text a stream shows: cut at the first stop string, holding back a tail that could still become one.
    `shown` is every piece let through; `on_stop` (the stream's cancel) runs when a stop string is found. Both
    streams (one request, or a row of a batch) feed their decoded pieces through one of these."""

    def __init__(self, stop, on_stop):
        self.stops = [s for s in ([stop] if isinstance(stop, str) else list(stop or ())) if s]
        self.on_stop = on_stop
        self.buffer = ""
        self.stopped = False
        self.shown = []

    def feed(self, piece: str) -> str:
        out = self._cut(piece)
        if out:
            self.shown.append(out)
        return out

    def _cut(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.buffer += piece
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self.on_stop()
            out, self.buffer = self.buffer[:min(hits)], ""
            return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        out = self.buffer[:len(self.buffer) - hold]
        self.buffer = self.buffer[len(out):]
        return out

    def flush(self) -> str:
        """At the end of the reply: the held-back tail (nothing after a stop string)."""
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        if out:
            self.shown.append(out)
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
        self._eos_ids = end_token_ids(model, tokenizer)
        self._cancel = threading.Event()
        self._filter = _StopFilter(stop, self.cancel)
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
            if out := self._filter.feed(piece):
                yield out
        self._drained = True
        if tail := self._filter.flush():
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
        self.text = "".join(self._filter.shown)
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


def end_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a reply: the model's generation config's end tokens and the tokenizer's (generation,
    serving and RL rollouts all stop at the same ones)."""
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate(model, tokenizer, prompt: str, **kwargs) -> str:
    """The whole answer to a prompt (see GenerationStream for the keyword arguments)."""
    return GenerationStream(model, tokenizer, prompt, **kwargs).run()


def sample_replies(model, tokenizer, prompts, samples: int = 1, temperature: float = 0.7, top_p: float = 0.9,
                   max_new_tokens: int = 128, seed: int = 0, batch_size: int = 64, open_thinking: bool = False) -> list[str]:
    """`samples` replies per user prompt (prompt-major order) with the chat template, through the batched engine
    (complete_prompts); `open_thinking` is the template's thinking switch (the replies then start inside the <think>
    block)."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True,
                                           open_thinking=open_thinking)
             for p in prompts]
    return complete_prompts(model, tokenizer, texts, samples=samples, temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)


def complete_prompts(model, tokenizer, texts, samples: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                     max_new_tokens: int = 128, seed: int = 0, batch_size: int = 64) -> list[str]:
    """`samples` completions of each prompt text (already rendered; prompt-major order), through the batched engine:
    up to `batch_size` completions decoded together, each prompt prefilled once for its samples, left-padded to the
    longest of its batch (so prompts of like lengths batch best). Temperature 0 is greedy: generate()'s text."""
    from model import is_minimind
    from .engine import generate_batch

    if not texts:
        return []
    if not is_minimind(model):  # the engine fills MiniMind's cache only; an export gets one generate() per completion
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return [generate(model, tokenizer, text, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p) for text in texts for _ in range(samples)]
    eos = end_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    if not (temperature > 0 and top_p > 0):
        temperature = 0.0  # greedy, as sampling_kwargs reads it
    generator = torch.Generator(device=model.device).manual_seed(seed)
    per_batch = max(1, batch_size // samples)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    replies = []
    for start in range(0, len(ids), per_batch):
        batch = ids[start:start + per_batch]
        width = max(len(row) for row in batch)
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in batch], device=model.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in batch], device=model.device)
        out = generate_batch(model, input_ids, mask, num_samples=samples, max_new_tokens=max_new_tokens,
                             eos_token_ids=eos, pad_token_id=pad, temperature=temperature, top_p=min(top_p, 1.0),
                             generator=generator)
        replies += tokenizer.batch_decode(out.tokens.masked_fill(~out.mask, pad), skip_special_tokens=True)
    return replies
