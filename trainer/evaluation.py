"""Measurements on a trained model that reuse the training data path: held-out perplexity and bits per byte,
held-out loss, and DPO preference accuracy (plain and implicit-reward).

What is scored is exactly what the training loss scores (dataset.build_dataset): every token of a pretraining
text plus its end-of-text token; the assistant tokens (reply + end-of-turn) of a conversation; the chosen reply of
a DPO pair. Documents longer than max_seq_len are scored in consecutive windows of max_seq_len tokens, each
window starting without the previous one's context, as in training.

Bits per byte = total NLL in nats over the scored tokens / (ln 2 · UTF-8 bytes of the scored text). The scored
text is what the loss-bearing tokens decode to: data text, including added non-special tokens such as <think>,
counts its UTF-8 bytes; the tokenizer's special (control) tokens, e.g. end-of-text or end-of-turn, count 0 bytes
although their NLL is in the total. For pretraining text that is exactly the UTF-8 size of the text.
"""
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dataset import DPOCollator, PackedBatchCollator, build_dataset
from dataset.jsonl import KINDS, json_lines
from model import is_minimind
from . import losses


@dataclass
class Score:
    """Token-level totals for one model on one file; the ratios are properties."""
    nll: float  # nats, summed over the scored tokens
    tokens: int  # scored (loss-bearing) tokens
    bytes: int  # UTF-8 bytes of the scored text (see the module docstring)
    samples: int  # scored sequences (windows of long documents count one each)

    @property
    def loss(self) -> float:
        """Mean NLL per scored token (nats)."""
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes) if self.bytes else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}


def detect_kind(path) -> str:
    """'pretrain', 'sft' or 'dpo' from the keys of the first non-blank line ({"text"}, {"conversations"},
    {"chosen", "rejected"}); ValueError naming the file when it is none of them."""
    for line_no, record in json_lines(path):  # the first record decides
        if isinstance(record, dict):
            if "text" in record:
                return "pretrain"
            if "conversations" in record:
                return "sft"
            if "chosen" in record and "rejected" in record:
                return "dpo"
        raise ValueError(f"{path}:{line_no}: not a MiniMind record (expected a \"text\", \"conversations\" "
                         f"or \"chosen\"/\"rejected\" key)")
    raise ValueError(f"{path}: no records")


def token_byte_lengths(tokenizer) -> torch.Tensor:
    """UTF-8 bytes each token id stands for, shape (len(tokenizer),): 0 for special (control) tokens, the UTF-8
    size of the content for added non-special tokens, and for byte-level BPE the number of bytes the token
    encodes (one per character of its byte-level string). Other tokenizers fall back to the size of the token
    decoded on its own, which is only approximate for tokens that hold part of a character."""
    n = len(tokenizer)
    table = torch.zeros(n, dtype=torch.long)
    special = set(tokenizer.all_special_ids)
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    for i, token in enumerate(tokens):
        if i in special or token is None:
            continue
        if i in added:
            table[i] = len(added[i].encode("utf-8"))
        elif byte_level:
            table[i] = len(token)
        else:
            table[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return table


def _row(dataset, kind, i):
    """Row i of samples to score: a DPO pair contributes its chosen side."""
    return [dataset[i][0]] if kind == "dpo" else dataset[i]


def _logits_at_labels(model, batch):
    """Logits (N, vocab) at the batch's N loss-bearing positions (its flat `loss_positions`). A MiniMind model runs
    its LM head only there (prompts and padding skip it); another causal LM (an export loaded by transformers)
    returns every position's and they are picked."""
    device = model.device
    mask, keep = batch["attention_mask"], batch["loss_positions"].to(device)
    inputs = dict(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                  attention_mask=None if mask is None else mask.to(device), use_cache=False)
    if is_minimind(model):
        return model(**inputs, logits_positions=keep).logits
    logits = model(**inputs).logits
    return logits.flatten(0, 1).index_select(0, keep)


@torch.no_grad()
def score_file(model, tokenizer, path, kind: str = "auto", max_seq_len: int = 512, batch_size: int = 16,
               limit: int | None = None, progress: bool = False, desc: str | None = None, cache_dir=None) -> Score:
    """NLL, token and byte totals of `model` on a jsonl file (any of the project's formats, see the module
    docstring for what is scored); kind='auto' reads it from the file. Samples are packed into rows as in
    training (attention never crosses samples and positions restart per sample, so packing does not change the
    numbers). `limit` scores only the first N rows (packed rows are in a fixed shuffled order)."""
    kind = detect_kind(path) if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r} (expected auto or one of {', '.join(KINDS)})")
    dataset = build_dataset(kind, path, tokenizer, max_seq_len, packing=kind != "dpo", cache_dir=cache_dir)
    n_rows = len(dataset) if limit is None else min(limit, len(dataset))
    collate = PackedBatchCollator(tokenizer.pad_token_id, max_seq_len)
    byte_table = token_byte_lengths(tokenizer)
    nll, tokens, n_bytes, samples = 0.0, 0, 0, 0
    was_training = model.training
    model.eval()
    starts = range(0, n_rows, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc or Path(path).name, unit="batch", leave=False, dynamic_ncols=True)
    try:
        for start in starts:
            chunk = [_row(dataset, kind, i) for i in range(start, min(start + batch_size, n_rows))]
            batch = collate(chunk)
            labels = batch["labels"].flatten()[batch["loss_positions"]]
            ce = losses.token_cross_entropy(_logits_at_labels(model, batch), labels.to(model.device))
            nll += float(ce.double().sum())
            tokens += len(labels)
            n_bytes += int(byte_table[labels].sum())
            samples += sum(len(row) for row in chunk)
    finally:
        model.train(was_training)
    return Score(nll=nll, tokens=tokens, bytes=n_bytes, samples=samples)


def mean_token_loss(model, tokenizer, path, kind="sft", max_seq_len=512, batch_size=16) -> float:
    """Mean cross entropy per loss-bearing token (assistant tokens for conversations, all for text)."""
    return score_file(model, tokenizer, path, kind, max_seq_len, batch_size).loss


@torch.no_grad()
def preference_accuracy(model, tokenizer, path, max_seq_len=512, batch_size=16, reference=None) -> float:
    """Share of pairs the model prefers the chosen reply. Without a reference: log π(chosen) > log π(rejected);
    with one: DPO's implicit reward margin (log π − log π_ref)(chosen) > (…)(rejected) (a tie counts as wrong,
    so the reference itself scores 0)."""
    dataset = build_dataset("dpo", path, tokenizer, max_seq_len)
    collate = DPOCollator(tokenizer.pad_token_id, max_seq_len)
    wins, pairs = 0, 0
    model.eval()
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        n, width = batch["num_items"], batch["labels"].shape[1]
        labels, rows = batch["labels"].flatten()[batch["loss_positions"]], batch["loss_positions"] // width

        def logprobs(m):  # (2n,) summed log-probs of each row's reply; chosen rows first, then rejected
            return losses.sequence_logprobs(_logits_at_labels(m, batch), labels.to(m.device), rows.to(m.device), 2 * n)

        logp = logprobs(model)
        if reference is not None:
            reference.eval()
            logp = logp - logprobs(reference).to(logp.device)
        wins += int((logp[:n] > logp[n:]).sum())
        pairs += n
    return wins / max(pairs, 1)
