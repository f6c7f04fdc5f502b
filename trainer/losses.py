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
    """Per-position cross entropy (B, T) in fp32; 0 where labels == -100."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE,
                           reduction="none").view(labels.shape)


def causal_lm_loss(logits, labels, token_weights=None):
    """Sum of (weighted) token cross entropies over loss-bearing positions."""
    ce = token_cross_entropy(logits, labels)
    return (ce * token_weights).sum() if token_weights is not None else ce.sum()


def tag_token_weights(labels, tag_ids, tag_weight: float):
    """1 on assistant tokens, `tag_weight` on the reasoning tag tokens, 0 outside the loss mask."""
    weights = (labels != IGNORE).float()
    is_tag = torch.isin(labels, torch.as_tensor(tag_ids, device=labels.device))
    return torch.where(is_tag, weights * tag_weight, weights)


def sequence_logprobs(logits, labels):
    """Sum of log p(label) over each row's loss-bearing positions: (B,)."""
    return -token_cross_entropy(logits, labels).sum(dim=-1)


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


def group_advantages(rewards, group_size: int, eps: float = 1e-4):
    """GRPO: each completion's reward minus its group's mean, over the group's std (groups are consecutive)."""
    grouped = rewards.view(-1, group_size)
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, completion_mask, clip_eps: float, beta: float):
    """Clipped policy-gradient objective with a KL penalty to the reference, averaged over each completion's
    tokens and summed over completions. Inputs are per token (N, T) except advantages (N,).

    Returns (loss_sum, kl per completion (N,), clipped-token share per completion (N,))."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    objective = torch.min(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    log_ratio_ref = ref_logprobs - logprobs
    kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1  # k3 estimator of KL(π‖π_ref), ≥ 0
    per_token = -(objective - beta * kl)
    mask = completion_mask.float()
    lengths = mask.sum(dim=1).clamp(min=1)
    clipped = ((ratio - 1).abs() > clip_eps).float()
    return ((per_token * mask).sum(dim=1) / lengths).sum(), ((kl * mask).sum(1) / lengths).detach(), \
        ((clipped * mask).sum(1) / lengths).detach()
