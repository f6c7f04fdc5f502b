"""Measurements on a trained model that reuse the training data path: held-out loss and DPO preference accuracy."""
import torch

from dataset import DPOCollator, PackedBatchCollator, build_dataset
from . import losses


def _batches(dataset, collate, batch_size):
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


@torch.no_grad()
def mean_token_loss(model, tokenizer, path, kind="sft", max_seq_len=512, batch_size=16) -> float:
    """Mean cross entropy per loss-bearing token (assistant tokens for conversations, all for text)."""
    dataset = build_dataset(kind, path, tokenizer, max_seq_len, packing=True)
    collate = PackedBatchCollator(tokenizer.pad_token_id, max_seq_len)
    total, items = 0.0, 0
    model.eval()
    for batch in _batches(dataset, collate, batch_size):
        logits = model(input_ids=batch["input_ids"].to(model.device), position_ids=batch["position_ids"].to(model.device),
                       attention_mask=None if batch["attention_mask"] is None else batch["attention_mask"].to(model.device),
                       use_cache=False).logits
        total += float(losses.causal_lm_loss(logits, batch["labels"].to(model.device)))
        items += batch["num_items"]
    return total / max(items, 1)


@torch.no_grad()
def preference_accuracy(model, tokenizer, path, max_seq_len=512, batch_size=16, reference=None) -> float:
    """Share of pairs the model prefers the chosen reply. Without a reference: log π(chosen) > log π(rejected);
    with one: DPO's implicit reward margin (log π − log π_ref)(chosen) > (…)(rejected)."""
    dataset = build_dataset("dpo", path, tokenizer, max_seq_len)
    collate = DPOCollator(tokenizer.pad_token_id, max_seq_len)
    wins, pairs = 0, 0
    model.eval()
    for batch in _batches(dataset, collate, batch_size):
        n, ids, labels = batch["num_items"], batch["input_ids"].to(model.device), batch["labels"].to(model.device)
        logp = losses.sequence_logprobs(model(input_ids=ids, use_cache=False).logits, labels)
        if reference is not None:
            logp = logp - losses.sequence_logprobs(reference(input_ids=ids, use_cache=False).logits, labels)
        wins += int((logp[:n] > logp[n:]).sum())
        pairs += n
    return wins / max(pairs, 1)
