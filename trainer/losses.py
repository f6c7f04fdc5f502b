"""Every stage's loss, in one place.

Each loss returns a SUM over its items (tokens, or preference pairs), never a mean: the trainer divides by the
number of items in the whole optimizer step across all micro-batches and ranks, so a step's gradient does not
depend on how the step was split into micro-batches or processes.
Labels are pre-shifted by the data pipeline: labels[b, t] is the target at position t, -100 where no loss.
"""
import torch
import torch.nn.functional as F

IGNORE = -100


def token_cross_entropy(logits, labels):
    """Per-position cross entropy in fp32, shaped like labels ((B, T), or (N,) for logits taken at N positions);
    0 where labels == -100."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.flatten(), ignore_index=IGNORE,
                           reduction="none").view(labels.shape)


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-position cross entropy of hidden @ weight.T, in row chunks, without keeping the (N, vocab) logits.

    Forward keeps one float per row (its log-sum-exp); backward recomputes each chunk's logits and turns them into
    the gradient in place: softmax − one-hot, times the row's upstream gradient. The head's matmuls run in the
    autocast dtype as nn.Linear's would (bf16 logits, then fp32 for the softmax), so the values are the unfused
    ones; what it saves is the passes over vocab-wide fp32 tensors (cast, log-softmax, its backward, the zeroed
    gradient) and their memory."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_rows):
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        with torch.autocast(device, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            valid = labels != IGNORE
            target = labels.clamp_min(0)[:, None]  # (N, 1); ignored rows pick token 0 and are zeroed below
            lse = hidden.new_empty(len(labels), dtype=torch.float32)
            target_logit = torch.empty_like(lse)
            for s in range(0, len(labels), chunk_rows):
                logits = (h[s:s + chunk_rows] @ w.T).float()  # (n, vocab)
                lse[s:s + chunk_rows] = torch.logsumexp(logits, dim=-1)
                target_logit[s:s + chunk_rows] = logits.gather(1, target[s:s + chunk_rows]).squeeze(1)
        ctx.save_for_backward(h, w, target, valid, lse)
        ctx.chunk_rows, ctx.dtypes = chunk_rows, (hidden.dtype, weight.dtype)
        return (lse - target_logit).masked_fill_(~valid, 0.0)

    @staticmethod
    def backward(ctx, grad_ce):
        h, w, target, valid, lse = ctx.saved_tensors
        n = ctx.chunk_rows
        row_grad = (grad_ce.float() * valid)[:, None]  # (N, 1)
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if ctx.needs_input_grad[1] else None
        minus_one = h.new_full((min(n, len(target)), 1), -1.0, dtype=torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, len(target), n):
                probs = (h[s:s + n] @ w.T).float().sub_(lse[s:s + n, None]).exp_()  # softmax, (n, vocab)
                probs.scatter_add_(1, target[s:s + n], minus_one[:len(probs)])  # − one-hot
                g = probs.mul_(row_grad[s:s + n]).to(h.dtype)
                if grad_h is not None:
                    grad_h[s:s + n] = g @ w
                if grad_w is not None:
                    grad_w += (g.T @ h[s:s + n]).float()
        return (grad_h.to(ctx.dtypes[0]) if grad_h is not None else None,
                grad_w.to(ctx.dtypes[1]) if grad_w is not None else None, None, None)


def linear_cross_entropy(hidden, weight, labels, chunk_rows: int | None = None):
    """token_cross_entropy(hidden @ weight.T, labels) for hidden (N, C) and labels (N,), computed chunk by chunk
    (the fused LM head + loss of a training step), without the vocab-wide logits: the same values and gradients,
    the head's gradient to bf16's rounding under bf16 autocast (it is summed over chunks in fp32).
    chunk_rows: rows per chunk; by default 256 on a CPU (a chunk's fp32 logits stay near the cache) and 4096 on a
    GPU (fewer kernel launches)."""
    if chunk_rows is None:
        chunk_rows = 256 if hidden.device.type == "cpu" else 4096
    return _LinearCrossEntropy.apply(hidden, weight, labels, chunk_rows)


def causal_lm_loss(logits, labels, token_weights=None):
    """Sum of (weighted) token cross entropies over loss-bearing positions."""
    ce = token_cross_entropy(logits, labels)
    return (ce * token_weights).sum() if token_weights is not None else ce.sum()


def tag_token_weights(labels, tag_ids, tag_weight: float):
    """1 on assistant tokens, `tag_weight` on the reasoning tag tokens, 0 outside the loss mask."""
    weights = (labels != IGNORE).float()
    is_tag = torch.isin(labels, torch.as_tensor(tag_ids, device=labels.device))
    return torch.where(is_tag, weights * tag_weight, weights)


def sequence_logprobs(logits, labels, rows=None, num_rows=None):
    """Sum of log p(label) over each row's loss-bearing positions: (B,). With `rows`, logits and labels are taken
    at N positions ((N, vocab), (N,)) and rows[i] is position i's row, of num_rows."""
    token_logprobs = -token_cross_entropy(logits, labels)
    if rows is None:
        return token_logprobs.sum(dim=-1)
    return token_logprobs.new_zeros(num_rows).index_add(0, rows, token_logprobs)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Sigmoid DPO (Rafailov et al. 2023) on sequence log-probs, summed over pairs.

    Returns (loss_sum, chosen_rewards, rejected_rewards) where rewards are β·(log π − log π_ref) per pair.
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return loss.sum(), chosen_rewards.detach(), rejected_rewards.detach()


def distillation_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """α·CE(labels) + (1−α)·T²·KL(teacher_T ‖ student_T), summed over loss-bearing tokens.

    Returns (loss_sum, ce_sum, kl_sum)."""
    mask = labels != IGNORE
    ce = token_cross_entropy(student_logits, labels).sum()
    s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum()
    return alpha * ce + (1 - alpha) * temperature ** 2 * kl, ce.detach(), kl.detach()


def group_advantages(rewards, group_size: int, scale: str = "group", eps: float = 1e-4):
    """GRPO advantages: each completion's reward minus its group's mean (groups are consecutive), divided by
    the group's std (scale="group", the paper), by the std of all rewards in the batch ("batch", more robust
    when a group's rewards are nearly equal) or not divided ("none", Dr. GRPO: the std weights easy and
    hard prompts unequally)."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred.view(-1)
    std = grouped.std(dim=1, keepdim=True) if scale == "group" else rewards.std()
    return (centred / (std + eps)).view(-1)


LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def grpo_token_weights(completion_mask, loss_type: str = "grpo", max_completion_length: int | None = None,
                       items_per_token: float | None = None):
    """How much each completion token counts in the summed loss, so that sum / (number of completions), which
    is what the trainer takes, is the loss type's normalisation:
      grpo     each completion's token mean (a long completion's tokens count less), summed over completions;
      dr_grpo  tokens / max_completion_length (a constant: no length bias), summed over completions;
      dapo     every token alike: tokens × (completions / tokens) over the whole optimizer step
               (`items_per_token`; default: this batch's own ratio)."""
    mask = completion_mask.float()
    if loss_type == "grpo":
        return mask / mask.sum(dim=1, keepdim=True).clamp(min=1)
    if loss_type == "dr_grpo":
        return mask / max_completion_length
    if loss_type == "dapo":
        if items_per_token is None:
            items_per_token = mask.shape[0] / mask.sum().clamp(min=1)
        return mask * items_per_token
    raise ValueError(f"unknown GRPO loss type {loss_type!r} (one of {', '.join(LOSS_TYPES)})")


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, completion_mask, clip_eps: float, beta: float,
              token_weights=None):
    """Clipped policy-gradient objective with a KL penalty to the reference. Inputs are per token (N, T) except
    advantages (N,); `token_weights` (N, T) normalise the sum (grpo_token_weights; default: the "grpo" type).

    Returns (loss_sum, kl per completion (N,), clipped-token share per completion (N,)): a token is clipped
    when the clip cuts its gradient (ratio above 1 + ε with a positive advantage, below 1 − ε with a negative
    one), so the share is 0 whenever the policy has not moved since sampling."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    objective = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    log_ratio_ref = ref_logprobs - logprobs
    kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1  # k3 estimator of KL(π‖π_ref), ≥ 0
    per_token = -(objective - beta * kl)
    if token_weights is None:
        token_weights = grpo_token_weights(completion_mask)
    mask = completion_mask.float()
    lengths = mask.sum(dim=1).clamp(min=1)
    clipped = (((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))).float()
    return (per_token * token_weights).sum(), ((kl * mask).sum(1) / lengths).detach(), \
        ((clipped * mask).sum(1) / lengths).detach()
