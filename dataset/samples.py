"""Turning validated records into training samples.

A sample is a pair of equal-length int lists: `input_ids` and `labels`, with labels already
shifted (labels[t] is the target for position t, IGNORE_INDEX where there is no loss).

tokenize_batch is the batched `datasets.map` function; its output columns are:
  pretrain, sft: input_ids, labels, n_targets, truncated
  dpo:           chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels, n_targets, truncated
A sample (or pair) that has no loss-bearing label after truncation is emitted with empty
input_ids so that the cached table still counts it; the dataset drops such rows.
"""
import hashlib
import re

from datasets import Features, List, Value

from .jsonl import template_messages

IGNORE_INDEX = -100

_TOKENS = List(Value("int32"))
_SAMPLE_COLUMNS = {"input_ids": _TOKENS, "labels": _TOKENS}
_PAIR_COLUMNS = {f"{side}_{name}": _TOKENS for side in ("chosen", "rejected") for name in ("input_ids", "labels")}
_STAT_COLUMNS = {"n_targets": Value("int32"), "truncated": Value("bool")}


def sample_features(kind: str) -> Features:
    return Features({**(_PAIR_COLUMNS if kind == "dpo" else _SAMPLE_COLUMNS), **_STAT_COLUMNS})


def check_tokenizer(tokenizer, kind: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("a fast tokenizer (tokenizer.json) is required: assistant masks need character offsets")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer must define bos_token and eos_token")
    if kind != "pretrain" and not re.search(r"{%-?\s*generation\s*-?%}", tokenizer.chat_template or ""):
        raise ValueError("the tokenizer's chat template must wrap assistant replies in {% generation %} "
                         "so that assistant token masks can be computed")


def tokenizer_signature(tokenizer) -> str:
    """Changes whenever tokenization could change: vocabulary, merges, normalizer, chat template."""
    h = hashlib.sha256()
    for part in (tokenizer.backend_tokenizer.to_str(), tokenizer.chat_template or "",
                 str(tokenizer.bos_token_id), str(tokenizer.eos_token_id)):
        h.update(part.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def pretrain_chunks(token_ids: list[int], bos_id: int, eos_id: int, max_seq_len: int) -> list[tuple[list, list]]:
    """[bos] + text + [eos] as next-token pairs, cut into consecutive chunks of <= max_seq_len
    positions so that every target token of a long document is kept exactly once."""
    ids = [bos_id, *token_ids, eos_id]
    inputs, targets = ids[:-1], ids[1:]
    return [(inputs[start:start + max_seq_len], targets[start:start + max_seq_len])
            for start in range(0, len(inputs), max_seq_len)]


def chat_sample(ids: list[int], loss_mask: list[int], max_seq_len: int) -> tuple[list, list, bool]:
    """(input_ids, labels, truncated): labels[t] = ids[t+1] where token t+1 carries loss."""
    truncated = len(ids) > max_seq_len + 1
    ids, loss_mask = ids[:max_seq_len + 1], loss_mask[:max_seq_len + 1]
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids[1:], loss_mask[1:])]
    return ids[:-1], labels, truncated


def last_run_only(mask: list[int]) -> list[int]:
    """Keep only the last contiguous run of ones: in a chat mask, the final assistant reply."""
    end = len(mask)
    while end and not mask[end - 1]:
        end -= 1
    start = end
    while start and mask[start - 1]:
        start -= 1
    return [0] * start + [1] * (end - start) + [0] * (len(mask) - end)


def _chat_tokens(tokenizer, conversations: list[list[dict]]) -> tuple[list, list]:
    """Token ids and assistant masks: the chat template decides what the assistant writes (see
    dataset/tokenizer_training.py: reasoning, content, tool calls and end of turn; not an empty think block)."""
    conversations = [template_messages(turns) for turns in conversations]
    encoded = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
    return encoded["input_ids"], encoded["assistant_masks"]


def _n_targets(labels: list[int]) -> int:
    return sum(label != IGNORE_INDEX for label in labels)


def tokenize_batch(batch: dict, *, kind: str, tokenizer, max_seq_len: int) -> dict:
    """Rows whose `error` is set (bad lines) produce nothing."""
    good = [i for i, error in enumerate(batch["error"]) if error is None]
    if kind == "pretrain":
        return _pretrain_batch([batch["text"][i] for i in good], tokenizer, max_seq_len)
    if kind == "sft":
        return _sft_batch([batch["conversations"][i] for i in good], tokenizer, max_seq_len)
    return _dpo_batch([batch["chosen"][i] for i in good], [batch["rejected"][i] for i in good],
                      tokenizer, max_seq_len)


def _pretrain_batch(texts, tokenizer, max_seq_len):
    out = {name: [] for name in sample_features("pretrain")}
    # verbose=False: documents longer than model_max_length are expected here, they get chunked.
    token_ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    for ids in token_ids:
        for input_ids, labels in pretrain_chunks(ids, tokenizer.bos_token_id, tokenizer.eos_token_id, max_seq_len):
            _append(out, input_ids=input_ids, labels=labels, n_targets=len(labels), truncated=False)
    return out


def _sft_batch(conversations, tokenizer, max_seq_len):
    out = {name: [] for name in sample_features("sft")}
    if not conversations:
        return out
    for ids, mask in zip(*_chat_tokens(tokenizer, conversations)):
        input_ids, labels, truncated = chat_sample(ids, mask, max_seq_len)
        n_targets = _n_targets(labels)
        if not n_targets:
            input_ids, labels = [], []
        _append(out, input_ids=input_ids, labels=labels, n_targets=n_targets, truncated=truncated)
    return out


def _dpo_batch(chosen, rejected, tokenizer, max_seq_len):
    out = {name: [] for name in sample_features("dpo")}
    if not chosen:
        return out
    sides = {}
    for side, conversations in (("chosen", chosen), ("rejected", rejected)):
        ids, masks = _chat_tokens(tokenizer, conversations)
        sides[side] = [chat_sample(i, last_run_only(m), max_seq_len) for i, m in zip(ids, masks)]
    for (c_ids, c_labels, c_cut), (r_ids, r_labels, r_cut) in zip(sides["chosen"], sides["rejected"]):
        n_chosen, n_rejected = _n_targets(c_labels), _n_targets(r_labels)
        n_targets = n_chosen + n_rejected if n_chosen and n_rejected else 0
        if not n_targets:
            c_ids, c_labels, r_ids, r_labels = [], [], [], []
        _append(out, chosen_input_ids=c_ids, chosen_labels=c_labels, rejected_input_ids=r_ids,
                rejected_labels=r_labels, n_targets=n_targets, truncated=c_cut or r_cut)
    return out


def _append(out: dict, **row) -> None:
    for name, value in row.items():
        out[name].append(value)
