"""Batched generation for rollouts and evaluation: many prompts, several samples each, decoded together.

What makes it faster than `model.generate()` for RL rollouts:
  - each distinct prompt is prefilled once; its keys/values are then copied to its G sample rows, so a group of
    G completions costs one prompt forward instead of G;
  - the KV cache is allocated once for the whole run (no concatenation per step, no growing tensors);
  - the step loop is a few tensor ops: no logits processors, no per-step stopping criteria objects, and the only
    host synchronisation is a "who has finished?" check every `check_every` steps.

Prompts are left-padded, so every row writes its new token at the same cache position and one length counts for
the batch; each row has its own position ids (its real prompt length + step), and a padding mask hides the pad
positions. A finished row gets padding tokens; every `check_every` steps the finished rows are dropped from the
batch (and its cache) once they are half of it, so long stragglers do not drag the finished rows along.
Greedy output is the same as `generate()`'s (tests/test_engine.py).

torch.compile: the engine takes a compiled model as it is (`torch.compile(model, dynamic=True)`). On this project's
CPU machine (demo preset, 1 thread) a compiled model decoded 1.2–1.4× faster once compiled, but the first call
took ~8 minutes (a busy 2-core machine), so compiling pays only for long runs; it is not done here by default.
"""
from dataclasses import dataclass

import torch


class StaticCache:
    """Keys and values of every layer in buffers allocated once, (N, kv heads, max_len, head dim).

    It offers what the model's Attention asks of a cache: `update(k, v, layer_idx)` stores the new positions and
    returns the filled part, `get_seq_length()` the number of filled positions. Buffers are created on the first
    update, in the dtype the keys come in (bf16 under autocast)."""

    def __init__(self, num_layers: int, batch: int, max_len: int):
        self.num_layers, self.batch, self.max_len = num_layers, batch, max_len
        self.keys, self.values = [None] * num_layers, [None] * num_layers
        self.length = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, k, v, layer_idx: int):
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions needed, {self.max_len} allocated")
        if self.keys[layer_idx] is None:
            shape = (self.batch, k.shape[1], self.max_len, k.shape[3])
            self.keys[layer_idx] = k.new_zeros(shape)
            self.values[layer_idx] = v.new_zeros(shape)
        self.keys[layer_idx][:, :, start:end] = k
        self.values[layer_idx][:, :, start:end] = v
        if layer_idx == self.num_layers - 1:  # the last layer of this forward: the positions are filled
            self.length = end
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def keep(self, rows):
        """Drop every row but `rows` (a 1-D index tensor): finished sequences stop costing compute."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.batch = len(rows)

    def expanded(self, repeats: int, max_len: int) -> "StaticCache":
        """A cache of batch × repeats rows and room for max_len positions, row b's filled positions copied to
        rows b·repeats … b·repeats + repeats − 1 (the G samples of prompt b share its prefill)."""
        out = StaticCache(self.num_layers, self.batch * repeats, max_len)
        out.length = self.length
        for layer in range(self.num_layers):
            for src, dst in ((self.keys, out.keys), (self.values, out.values)):
                B, K, _, D = src[layer].shape
                dst[layer] = src[layer].new_zeros((B * repeats, K, max_len, D))
                # broadcast copy: no (B·repeats, ..., length) temporary
                dst[layer].view(B, repeats, K, max_len, D)[:, :, :, :self.length].copy_(
                    src[layer][:, None, :, :self.length])
        return out


@dataclass
class Completions:
    """`tokens` (N, T): the new tokens, row n·G + g being sample g of prompt n, padded after each row's end;
    `lengths` (N,): tokens generated, the end-of-sequence token included; `finished` (N,): the row ended with
    an end-of-sequence token (False: it was cut at max_new_tokens)."""
    tokens: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """(N, T) True on each row's generated tokens (up to and including its end token)."""
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None] < self.lengths[:, None]


def next_tokens(logits, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, generator=None):
    """One token per row from (N, vocab) logits: argmax when temperature is 0, otherwise a sample from the
    temperature-scaled distribution restricted to the top_k most likely tokens (0: all) and then to the smallest
    set whose probability reaches top_p (the most likely token always stays)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))  # rank 0 has 0 before it
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # inverse-CDF sampling, one uniform number per row: several times faster on CPU than torch.multinomial
    # (or an exponential race, which needs a random number per vocabulary entry). u in (0, 1], so the first
    # index whose cumulative probability reaches u·total is a token of non-zero probability.
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    u = 1.0 - torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype)
    return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)


def _forward(model, input_ids, mask, positions, cache):
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
    return out.logits[:, -1]


def prefill(model, input_ids, prompt_mask):
    """Run B left-padded prompts (input_ids (B, P), prompt_mask (B, P) bool, False on padding) through the model:
    (the last position's logits (B, vocab), a StaticCache holding their P positions). Attention is causal over
    real tokens (a padding query sees itself only, so no row is empty) and positions count real tokens only."""
    B, P = input_ids.shape
    device = input_ids.device
    positions = (prompt_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
    prefill_mask = (causal[None] & prompt_mask[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)
    cache = StaticCache(model.config.num_hidden_layers, B, P)
    logits = _forward(model, input_ids, prefill_mask[:, None], positions, cache)
    return logits, cache


@torch.no_grad()
def generate_batch(model, input_ids, attention_mask=None, *, num_samples: int = 1, max_new_tokens: int = 128,
                   eos_token_ids=(), pad_token_id: int = 0, temperature: float = 0.0, top_p: float = 1.0,
                   top_k: int = 0, generator=None, check_every: int = 8) -> Completions:
    """Complete B left-padded prompts (input_ids (B, P), attention_mask (B, P) with 0 on padding) with
    `num_samples` completions each, decoded as one batch of B·num_samples rows.

    A row stops at any of `eos_token_ids` (its later positions are `pad_token_id`); the batch stops when all rows
    have, checked every `check_every` steps (when half the rows or more have finished, they leave the batch),
    or after `max_new_tokens`. Sampling draws from `generator` (a torch.Generator on the model's device; None:
    the global RNG). Runs under no_grad (not inference_mode, so the outputs can feed a training forward) with
    the model in eval mode, restoring its mode after."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, prompt length), got shape {tuple(input_ids.shape)}")
    B, P = input_ids.shape
    N, G = B * num_samples, num_samples
    device = input_ids.device
    prompt_mask = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).bool()
    eos = torch.as_tensor(list(eos_token_ids), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        logits, prefill_cache = prefill(model, input_ids, prompt_mask)

        # every sample row gets a copy of its prompt's keys/values, last logits, padding mask and next position
        cache = prefill_cache.expanded(G, P + max_new_tokens)
        del prefill_cache
        logits = logits.repeat_interleave(G, dim=0)
        valid = torch.ones(N, P + max_new_tokens, dtype=torch.bool, device=device)
        valid[:, :P] = prompt_mask.repeat_interleave(G, dim=0)
        position = prompt_mask.sum(dim=1).repeat_interleave(G)  # (N,) the next token's position

        tokens = torch.full((N, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
        rows = torch.arange(N, device=device)  # the output row of each row still decoded
        done = torch.zeros(N, dtype=torch.bool, device=device)
        steps = 0
        for t in range(max_new_tokens):
            nxt = next_tokens(logits, temperature, top_p, top_k, generator).masked_fill(done, pad_token_id)
            tokens[rows, t] = nxt
            done |= torch.isin(nxt, eos)
            steps = t + 1
            if steps == max_new_tokens:
                break
            if steps % check_every == 0:  # the loop's one host sync
                live = (~done).nonzero().squeeze(1)
                if len(live) == 0:
                    break
                if len(live) <= len(rows) // 2:  # compact: half the rows or more have finished
                    cache.keep(live)
                    rows, valid, position, done, nxt = rows[live], valid[live], position[live], done[live], nxt[live]
            logits = _forward(model, nxt[:, None], valid[:, None, None, :P + steps], position[:, None], cache)
            position = position + 1
    finally:
        model.train(was_training)

    tokens = tokens[:, :steps]
    is_eos = torch.isin(tokens, eos)
    finished = is_eos.any(dim=1)
    first_eos = is_eos.int().argmax(dim=1)  # the first True (0 where none; those rows use `steps`)
    lengths = torch.where(finished, first_eos + 1, torch.full_like(first_eos, steps))
    return Completions(tokens, lengths, finished)
