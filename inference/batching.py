"""Continuous batching for serving: concurrent requests decoded together, one token per request per model forward.

A Batcher owns one model and one worker thread. Requests are submitted from any thread (`submit()` returns a
Sequence, which yields the request's new token ids as they are decoded); between two decode steps the worker admits
the requests that arrived (their prompts prefilled together, left-padded, by inference/engine.py's `prefill`), then
feeds the last token of every active row through the model at once, samples each row with its own settings
(temperature, top_p, repetition penalty, seed) and hands each row its token. A row leaves the batch as soon as it
ends (an end token, its max_new_tokens, or a cancel: a client that went away frees its row at the next step).

Why it scales: on a CPU, decoding one token for one sequence is almost all per-token overhead (Python, kernel
launches, reading the weights); a forward over 16 rows of the demo model costs about twice one row's. Threads that
each run their own `generate` instead fight over the interpreter and the cores (16 concurrent chats finished at
0.31x the throughput of the same chats sent one after another, before this; `scripts/bench.py --server` measures it).

The KV cache (RowCache) keeps all rows at one shared length, like the engine's StaticCache: every row writes its
new token at the same column. A row that joins later has fewer filled positions, so its prompt is placed right-
aligned at the current length and the columns before it are masked out (`valid`); each row keeps its own position
ids, so where a row sits in the buffer does not change its result. Columns no live row uses any more are trimmed
whenever the buffer is rebuilt (a row joins, or the buffer is full), so the width stays within the longest row.

BatchedStream is the server's view of one request: text pieces (detokenized, cut at stop strings) and the same
fields as generation.GenerationStream (text, prompt_tokens, completion_tokens, finish_reason).
"""
import queue
import threading

import torch

from .engine import _forward, prefill
from .generation import _StopFilter, end_token_ids

_END = object()  # a sequence's last queue item
_STOP = object()  # tells the worker to end


class RowCache:
    """Keys and values of a changing set of rows, (rows, kv heads, capacity, head dim) per layer, all rows filled up
    to the same `length`; `valid` (rows, capacity) marks the columns each row may attend to. Offers the model's
    cache interface (`update`, `get_seq_length`)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.keys, self.values, self.valid = None, None, None
        self.length = 0

    @property
    def rows(self) -> int:
        return 0 if self.valid is None else self.valid.shape[0]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, k, v, layer_idx: int):
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer_idx][:, :, start:end] = k
        self.values[layer_idx][:, :, start:end] = v
        if layer_idx == self.num_layers - 1:  # the last layer of this forward: the positions are filled
            self.length = end
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def next_mask(self):
        """Room for one more column, valid for every row: the (rows, 1, 1, length + 1) attention mask of a decode
        step."""
        if self.length == self.valid.shape[1]:
            self._rebuild()
        self.valid[:, self.length] = True
        return self.valid[:, None, None, :self.length + 1]

    def keep(self, rows):
        """Drop every row but `rows` (a 1-D index tensor)."""
        if len(rows) == 0:
            self.keys, self.values, self.valid, self.length = None, None, None, 0
            return
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.valid = self.valid.index_select(0, rows)

    def add(self, cache, mask):
        """Append the rows of a prefilled StaticCache (its `mask` (n, P) bool marks the real prompt positions)."""
        self._rebuild(cache.keys, cache.values, mask)

    def _rebuild(self, new_keys=None, new_values=None, new_valid=None):
        """New buffers: the old rows' used columns (leading columns no row uses are dropped) and the new rows,
        both right-aligned at the new length, with as much free room again (at least 32 columns)."""
        old_used, first = 0, 0
        if self.valid is not None:
            used = self.valid[:, :self.length].any(dim=0)
            first = int(used.int().argmax()) if bool(used.any()) else self.length
            old_used = self.length - first
        new_len = old_used if new_valid is None else max(old_used, new_valid.shape[1])
        capacity = 2 * new_len + 32
        reference = (self.keys or new_keys)[0]
        n_old, n_new = self.rows, 0 if new_valid is None else new_valid.shape[0]
        shape = (n_old + n_new, reference.shape[1], capacity, reference.shape[3])
        keys, values = [], []
        for layer in range(self.num_layers):
            k, v = reference.new_zeros(shape), reference.new_zeros(shape)
            if n_old:
                k[:n_old, :, new_len - old_used:new_len] = self.keys[layer][:, :, first:self.length]
                v[:n_old, :, new_len - old_used:new_len] = self.values[layer][:, :, first:self.length]
            if n_new:
                P = new_valid.shape[1]
                k[n_old:, :, new_len - P:new_len] = new_keys[layer]
                v[n_old:, :, new_len - P:new_len] = new_values[layer]
            keys.append(k)
            values.append(v)
        valid = torch.zeros(shape[0], capacity, dtype=torch.bool, device=reference.device)
        if n_old:
            valid[:n_old, new_len - old_used:new_len] = self.valid[:, first:self.length]
        if n_new:
            valid[n_old:, new_len - new_valid.shape[1]:new_len] = new_valid
        self.keys, self.values, self.valid, self.length = keys, values, valid, new_len


class Sequence:
    """One request in a Batcher. Iterate (in one consumer thread) for its new token ids as they are decoded; the
    iteration ends when the row does and raises the worker's exception if generation failed. `tokens` holds
    what was generated, `ended` is True when the row ended with an end token, `cancel()` asks the worker to drop it."""

    def __init__(self, prompt_ids, max_new_tokens, temperature, top_p, repetition_penalty, seed, eos_ids):
        if not prompt_ids:
            raise ValueError("an empty prompt: a sequence needs at least one prompt token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.prompt_ids, self.max_new_tokens = list(prompt_ids), max_new_tokens
        self.temperature, self.top_p, self.repetition_penalty = temperature, top_p, repetition_penalty
        self.sampled = temperature > 0 and top_p > 0  # else greedy, as generation.sampling_kwargs has it
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.eos_ids = set(eos_ids)
        self.tokens, self.ended, self.error = [], False, None
        self.cancelled = threading.Event()
        self.done = threading.Event()  # set once the worker has let go of the row
        self._queue = queue.SimpleQueue()

    def cancel(self):
        self.cancelled.set()

    def __iter__(self):
        for chunk in self.chunks():
            yield from chunk

    def chunks(self):
        """The new tokens in lists: each list holds every token decoded since the last one (a consumer that
        fell behind catches up with one list instead of one wake-up per token)."""
        while True:
            chunk = [self._queue.get()]
            while not self._queue.empty():
                chunk.append(self._queue.get())
            end = chunk[-1] is _END
            if end:
                chunk.pop()
            if chunk:
                yield chunk
            if end:
                break
        if self.error is not None:
            raise self.error

    def wait(self, timeout=None) -> bool:
        """Block until the worker has let go of the row (ended, cancelled or failed)."""
        return self.done.wait(timeout)

    # -- called by the worker
    def _push(self, token: int) -> bool:
        """Record a new token; True when the row has ended with it."""
        self.tokens.append(token)
        self._queue.put(token)
        self.ended = token in self.eos_ids
        return self.ended or len(self.tokens) >= self.max_new_tokens

    def _finish(self, error=None):
        self.error = error
        self._queue.put(_END)
        self.done.set()


def _nucleus_floor(sorted_probs, top_p):
    """Per row, the smallest probability in the nucleus, given each row's probabilities sorted in descending order:
    the tokens ranked above it hold less than top_p of the mass (so the most likely token always stays)."""
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    count = (mass_before < top_p[:, None]).sum(dim=-1, keepdim=True)
    return sorted_probs.gather(1, count - 1)


def sample_rows(logits, temperature, top_p, u, top_k_first: int = 64):
    """One token per row from (n, vocab) logits: row i sampled from softmax(logits / temperature[i]) restricted to the
    smallest set of most likely tokens whose probability reaches top_p[i] (the most likely one always stays), by
    inverse CDF over the vocabulary order with u[i] in (0, 1] — so a row's token depends on its own logits and u only,
    not on the other rows. The nucleus is found among the `top_k_first` most likely tokens (a cheap top-k instead of
    sorting the whole vocabulary, which costs ~0.5 ms a row on this CPU); rows whose nucleus is larger sort."""
    probs = (logits.float() / temperature[:, None]).softmax(dim=-1)
    narrow = top_p < 1
    if bool(narrow.any()):
        floor = torch.zeros_like(top_p)[:, None]
        rows = narrow.nonzero().squeeze(1)
        top = probs[rows].topk(min(top_k_first, probs.shape[1]), dim=-1).values
        floor[rows] = _nucleus_floor(top, top_p[rows])
        wide = rows[top.sum(dim=-1) < top_p[rows]]  # the nucleus reaches past the top-k: sort those rows
        if len(wide):
            floor[wide] = _nucleus_floor(probs[wide].sort(dim=-1, descending=True).values, top_p[wide])
        probs = probs.masked_fill(probs < floor, 0.0)
    cdf = probs.cumsum(dim=-1)
    return torch.searchsorted(cdf, u[:, None] * cdf[:, -1:]).clamp(max=cdf.shape[1] - 1).squeeze(1)


class Batcher:
    """Decodes the sequences submitted to it together, in one worker thread (started on the first submit).
    `max_rows` caps the batch; later requests wait for a free row. `stop()` ends the worker (pending requests are
    cancelled); a later submit starts a new one."""

    def __init__(self, model, tokenizer=None, max_rows: int = 32, eos_token_ids=None, pad_token_id=None):
        self.model, self.max_rows = model, max_rows
        self.eos_ids = list(eos_token_ids) if eos_token_ids is not None else end_token_ids(model, tokenizer)
        pad = pad_token_id if pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self._inbox = queue.SimpleQueue()
        self._thread, self._start_lock = None, threading.Lock()
        self._reset()

    def _reset(self):
        self.rows: list[Sequence] = []  # the active rows, in cache order
        self.cache = RowCache(self.model.config.num_hidden_layers)
        self.last = self.position = None  # (rows,) each row's last token and its next position

    @property
    def active(self) -> int:
        """Rows being decoded now (for tests and monitoring)."""
        return len(self.rows)

    def submit(self, prompt_ids, *, max_new_tokens: int = 512, temperature: float = 0.0, top_p: float = 1.0,
               repetition_penalty: float = 1.0, seed=None) -> Sequence:
        sequence = Sequence(prompt_ids, max_new_tokens, temperature, top_p, repetition_penalty, seed, self.eos_ids)
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="batcher", daemon=True)
                self._thread.start()
            self._inbox.put(sequence)
        return sequence

    def stop(self, timeout=None):
        # joined under the lock: a submit() meanwhile waits, then starts a fresh worker, never one beside this one
        with self._start_lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._inbox.put(_STOP)
                thread.join(timeout)

    # -- the worker
    def _work(self):
        waiting = []
        with torch.inference_mode():
            while True:
                # take what arrived; wait only when there is nothing to decode
                try:
                    while True:
                        item = self._inbox.get(block=not self.rows and not waiting)
                        if item is _STOP:  # a request cut off by shutdown ends with an error, not as if complete
                            for sequence in self.rows + waiting:
                                sequence._finish(RuntimeError("the server is shutting down"))
                            self._reset()
                            return
                        waiting.append(item)
                except queue.Empty:
                    pass
                for sequence in [s for s in waiting if s.cancelled.is_set()]:
                    waiting.remove(sequence)
                    sequence._finish()
                free = self.max_rows - len(self.rows)
                new, waiting = waiting[:free], waiting[free:]
                try:
                    self._drop([s.cancelled.is_set() for s in self.rows])
                    if new:
                        self._admit(new)
                    if self.rows:
                        self._decode()
                except Exception as e:  # fail the requests in the batch, keep serving the next ones
                    for sequence in set(self.rows + new):
                        if not sequence.done.is_set():
                            sequence._finish(e)
                    self._reset()

    def _admit(self, new):
        """Prefill the new sequences together and give each its first token."""
        device = self.model.device
        P = max(len(s.prompt_ids) for s in new)
        ids = torch.full((len(new), P), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(new), P, dtype=torch.bool)
        for i, sequence in enumerate(new):
            ids[i, P - len(sequence.prompt_ids):] = torch.tensor(sequence.prompt_ids)
            mask[i, P - len(sequence.prompt_ids):] = True
        ids, mask = ids.to(device), mask.to(device)
        logits, prefilled = prefill(self.model, ids, mask)
        self.cache.add(prefilled, mask)
        start = len(self.rows)
        self.rows += new
        position = mask.sum(dim=1)
        self.position = position if self.position is None else torch.cat([self.position, position])
        tokens = self._sample(logits, new)
        self.last = tokens if self.last is None else torch.cat([self.last, tokens])
        self._emit(tokens, start)

    def _decode(self):
        mask = self.cache.next_mask()
        logits = _forward(self.model, self.last[:, None], mask, self.position[:, None], self.cache)
        self.position = self.position + 1
        self.last = self._sample(logits, self.rows)
        self._emit(self.last, 0)

    def _sample(self, logits, rows):
        logits = logits.float()
        for i, sequence in enumerate(rows):
            if sequence.repetition_penalty != 1.0:  # transformers' rule: over the prompt and the reply so far
                seen = torch.tensor(sequence.prompt_ids + sequence.tokens, device=logits.device).unique()
                scores = logits[i, seen]
                p = sequence.repetition_penalty
                logits[i, seen] = torch.where(scores < 0, scores * p, scores / p)
        tokens = logits.argmax(dim=-1)
        sampled = [i for i, sequence in enumerate(rows) if sequence.sampled]
        if sampled:
            which = torch.tensor(sampled, device=logits.device)
            picked = [rows[i] for i in sampled]
            temperature = torch.tensor([s.temperature for s in picked], device=logits.device)
            top_p = torch.tensor([s.top_p for s in picked], device=logits.device)
            u = torch.cat([1.0 - torch.rand(1, generator=s.generator) for s in picked]).to(logits.device)
            tokens[which] = sample_rows(logits[which], temperature, top_p, u)
        return tokens

    def _emit(self, tokens, start: int):
        """Hand rows start… their new tokens; rows that ended leave the batch."""
        ended = [False] * start + [s._push(token) for s, token in zip(self.rows[start:], tokens.tolist())]
        self._drop(ended)

    def _drop(self, gone):
        """Remove the rows flagged in `gone` from the batch, then tell their consumers they have ended."""
        if not any(gone):
            return
        leaving = [s for s, g in zip(self.rows, gone) if g]
        keep = [i for i, g in enumerate(gone) if not g]
        index = torch.tensor(keep, dtype=torch.long, device=self.last.device)
        self.cache.keep(index)
        self.rows = [self.rows[i] for i in keep]
        self.last, self.position = self.last[index], self.position[index]
        for sequence in leaving:
            sequence._finish()


class BatchedStream:
    """One request served by a Batcher, with GenerationStream's interface: iterate (once) for text pieces as they
    are decoded (cut at the first stop string); at the end `text`, `prompt_tokens`, `completion_tokens` and
    `finish_reason` ('stop' | 'length') are set. `close()` stops early (the row leaves the batch) and waits for the
    worker to let go of it; it is safe at any point, also after the end."""

    def __init__(self, batcher: Batcher, tokenizer, prompt: str, *, max_new_tokens: int = 512,
                 temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0, stop=(), seed=None):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        self.tokenizer = tokenizer
        self.prompt_tokens, self.completion_tokens = len(ids), 0
        self.max_new_tokens = max_new_tokens
        self.finish_reason, self.text = None, ""
        self._drained = False
        self._filter = _StopFilter(stop, self.cancel)
        self._sequence = batcher.submit(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                        repetition_penalty=repetition_penalty, seed=seed)

    def cancel(self):
        self._sequence.cancel()

    def __iter__(self):
        if self._drained:
            return
        # incremental detokenizing: decode from `start` (a token boundary where the text was whole) so each new
        # token costs a short decode; `before` is the text of tokens[start:done], the part already shown
        tokens, start, done, before = [], 0, 0, ""
        try:
            for chunk in self._sequence.chunks():
                if self._filter.stopped:
                    continue  # what the worker decoded before it saw the cancel
                tokens += chunk
                text = self.tokenizer.decode(tokens[start:], skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    continue  # a character cut between tokens: wait for the rest of its bytes
                piece = text[len(before):]
                start, done = done, len(tokens)
                before = self.tokenizer.decode(tokens[start:done], skip_special_tokens=True)
                if out := self._filter.feed(piece):
                    yield out
        finally:
            self._drained = True
        if len(tokens) > done and not self._filter.stopped:  # the reply ended inside a character: show what is there
            if out := self._filter.feed(self.tokenizer.decode(tokens[start:], skip_special_tokens=True)[len(before):]):
                yield out
        if tail := self._filter.flush():
            yield tail
        self._finish()

    def close(self):
        self.cancel()
        self._sequence.wait()
        self._drained = True
        self._finish()

    def _finish(self):
        self.text = "".join(self._filter.shown)
        self.completion_tokens = len(self._sequence.tokens)
        truncated = self.completion_tokens >= self.max_new_tokens and not self._sequence.ended and not self._filter.stopped
        self.finish_reason = "length" if truncated else "stop"

    def run(self) -> str:
        for _ in self:
            pass
        return self.text
