"""Shared prefixes: conversations that open with the same tokens (one system prompt with one tools block, say) are
packed as that prefix once, followed by each conversation's remainder as a branch.

A branch attends to the prefix and causally to itself, never to another branch, and its positions continue from
the prefix's length (dataset.collate builds that mask and those positions). So every branch sees exactly the
context it has as a conversation of its own: its loss is the same, and so is the gradient, which sums over the
branches what separate copies of the prefix would have received (up to float rounding; without dropout, which
draws one mask for the shared prefix; an MoE's balance loss counts the prefix's tokens once). Only loss-free positions
are shared (a prefix never holds a label), so the labels trained on are unchanged; the positions computed are fewer.
Grouping reads every sample's tokens into memory: this is for conversation files that fit it, not for corpora that
need --streaming.

MiniMind-3's tool data is the case this is for: a tools block is 300-600 tokens, a tool conversation's own part
about 100.
"""
from .samples import IGNORE_INDEX

MIN_SHARED = 32  # a shorter common prefix saves less than it costs to mask


def loss_free_lead(labels: list[int]) -> int:
    """How many leading positions carry no loss."""
    for t, label in enumerate(labels):
        if label != IGNORE_INDEX:
            return t
    return len(labels)


def _common(a: list[int], b: list[int], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def shared_prefix_groups(input_ids: list[list[int]], labels: list[list[int]], max_seq_len: int,
                         min_shared: int = MIN_SHARED) -> list[tuple[list[int], int]]:
    """Samples in groups that share a prefix: [(sample indices, prefix length)], every sample in exactly one group.

    A group of one has prefix length 0 (packed as usual). Samples are sorted by their loss-free lead, so those
    sharing a prefix are neighbours; a group grows while its common prefix keeps at least `min_shared` positions
    and the prefix plus all branches fits in `max_seq_len`. Deterministic."""
    leads = [loss_free_lead(row) for row in labels]
    order = sorted(range(len(input_ids)), key=lambda i: input_ids[i][:leads[i]])
    groups: list[tuple[list[int], int]] = []
    members, shared, size = [], 0, 0  # the open group, its common prefix and its packed length

    def close():
        if members:
            groups.append((list(members), shared if len(members) > 1 else 0))

    for i in order:
        length, lead = len(input_ids[i]), min(leads[i], len(input_ids[i]) - 1)  # a branch keeps >= 1 position
        if members:
            prev = members[-1]
            common = _common(input_ids[prev], input_ids[i], min(shared, lead))
            # the prefix shrinks to `common`: the earlier branches grow by what it gives up
            grown = common + (size - shared) + (shared - common) * len(members) + (length - common)
            # ... and only when the group still saves as much: n + 1 copies of `common` against n of `shared`
            if common >= min_shared and grown <= max_seq_len and common * len(members) >= shared * (len(members) - 1):
                members.append(i)
                shared, size = common, grown
                continue
        close()
        members, shared, size = [i], lead, length
    close()
    return groups


def group_entries(groups, lengths) -> tuple[list[list[tuple[int, int, int]]], list[int]]:
    """Per group, its entries (sample, cut, role) in order, and its packed length. Role 0: a whole sample;
    1: a prefix (the sample's first `cut` positions); 2: a branch (the sample from position `cut` on)."""
    entries, sizes = [], []
    for members, shared in groups:
        if len(members) == 1:
            entries.append([(members[0], 0, 0)])
            sizes.append(int(lengths[members[0]]))
        else:
            entries.append([(members[0], shared, 1)] + [(m, shared, 2) for m in members])
            sizes.append(shared + sum(int(lengths[m]) - shared for m in members))
    return entries, sizes


def branch_rows(prompt_lengths: list[int], completion_lengths: list[int], group_size: int, per_row: int):
    """[(prompt index, its rollout rows in this row, the row's width)]: each prompt's completions, `per_row` to a row,
    each row holding the prompt once."""
    rows = []
    for b, p in enumerate(prompt_lengths):
        members = range(b * group_size, (b + 1) * group_size)
        for i in range(0, group_size, per_row):
            chunk = list(members[i:i + per_row])
            rows.append((b, chunk, p + sum(completion_lengths[n] for n in chunk)))
    return rows


def prompt_branches(sequences, prompt_mask, prompt_lengths: list[int], completion_lengths: list[int],
                    layout) -> dict:
    """A rollout batch (GRPO's layout: N = prompts × group_size rows of a left-padded prompt (P) and a right-padded
    completion (C), the group's rows sharing one prompt; each completion's real tokens first) laid out in rows that
    hold a prompt once, then some of its completions as branches (`layout`: branch_rows' for these lengths). Returns the model inputs (input_ids, position_ids, attention_mask: (R, W) and a
    (R, 1, W, W) bool mask) and `predict_at` (N, C): the flat position (r * W + t) whose logits predict each
    completion token (the prompt's last position for the first; a padding token points at position 0)."""
    import torch

    from .collate import block_causal_mask

    device = sequences.device
    N, P = prompt_mask.shape
    C = sequences.shape[1] - P
    R, W = len(layout), max(width for _, _, width in layout)
    rows = sequences.tolist()
    input_ids = torch.zeros(R, W, dtype=torch.long)
    position_ids = torch.zeros(R, W, dtype=torch.long)
    segment_ids = torch.full((R, W), -1, dtype=torch.long)
    prefix_ids = torch.full((R, W), -2, dtype=torch.long)
    predict_at = torch.zeros(N, C, dtype=torch.long)
    for r, (b, members, _) in enumerate(layout):
        p = prompt_lengths[b]
        if p == 0:
            raise ValueError(f"prompt {b} of the rollout is empty: its first completion token has no position to be "
                             "predicted from")
        input_ids[r, :p] = torch.tensor(rows[members[0]][P - p:P])
        position_ids[r, :p] = torch.arange(p)
        segment_ids[r, :p] = 0
        start = p
        for k, n in enumerate(members):
            length = completion_lengths[n]
            input_ids[r, start:start + length] = torch.tensor(rows[n][P:P + length])
            position_ids[r, start:start + length] = torch.arange(p, p + length)
            segment_ids[r, start:start + length] = k + 1
            prefix_ids[r, start:start + length] = 0
            if length:
                predict_at[n, 0] = r * W + p - 1
                predict_at[n, 1:length] = r * W + torch.arange(start, start + length - 1)
            start += length
    # the (R, W) ids travel to the device and the (R, 1, W, W) mask is built there
    return {"input_ids": input_ids.to(device), "position_ids": position_ids.to(device),
            "attention_mask": block_causal_mask(segment_ids.to(device), prefix_ids.to(device)),
            "predict_at": predict_at.to(device)}
