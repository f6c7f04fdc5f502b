"""MiniMind: a small decoder-only transformer as a Hugging Face model.

Pre-norm blocks of RMSNorm → grouped-query attention with RoPE → RMSNorm → SwiGLU (or a mixture of SwiGLU
experts), with the token embedding tied to the LM head. Module and parameter names follow Llama's layout
(`model.layers.N.self_attn.q_proj`, `mlp.gate_proj`, ...), so a dense checkpoint is a Llama checkpoint; with
`qk_norm` (RMSNorm on each head's q and k, `self_attn.q_norm` / `k_norm`) it is a Qwen3 checkpoint.

Shapes: B batch, T new tokens, S = past + T key positions, C hidden size, H query heads, K kv heads, D head size.
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .configuration_minimind import MiniMindConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE, rotating the two halves of each head (Llama's convention)."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        init_fn = self.compute_default_rope_parameters if self.rope_type == "default" else ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = init_fn(config)  # YaRN rescales frequencies and attention
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, device=None, **_):
        base, d = config.rope_parameters["rope_theta"], config.head_dim
        return 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float, device=device) / d)), 1.0

    def forward(self, position_ids, dtype):  # (B, T) -> two (B, T, D)
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.attention_scaling).to(dtype), (angles.sin() * self.attention_scaling).to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# torch's CPU flash-attention backward takes 2-3x longer under bf16 autocast than in fp32 on rows up to this long
# (scripts/bench.py --attention), so training on a CPU attends in fp32 there, which is also more exact
CPU_FP32_ATTENTION_MAX_POSITIONS = 256


def apply_rope(x, cos, sin):  # x (B, heads, T, D), cos/sin (B, T, D)
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        C = config.hidden_size
        self.q_proj = nn.Linear(C, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, C, bias=False)
        # qk_norm: normalising each head's q and k bounds the attention logits (Qwen3, MiniMind-3)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else nn.Identity()
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, attn_mask, cache):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)  # (B, H, T, D)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, K, S, D)
        fp32 = (self.training and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and T <= CPU_FP32_ATTENTION_MAX_POSITIONS)
        with torch.autocast("cpu", enabled=False) if fp32 else nullcontext():
            # GQA: each kv head serves H/K query heads; SDPA broadcasts them without copying k/v H/K times
            y = F.scaled_dot_product_attention(
                *((q.float(), k.float(), v.float()) if fp32 else (q, k, v)), attn_mask=attn_mask,
                is_causal=attn_mask is None and T > 1, dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )  # (B, H, T, D)
        return self.resid_dropout(self.o_proj(y.transpose(1, 2).reshape(B, T, -1)))


class FeedForward(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        C, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(C, I, bias=False)
        self.up_proj = nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class MoEFeedForward(nn.Module):
    """Top-k routed SwiGLU experts plus optional always-on shared experts.

    Tokens are grouped by expert (one sort), so each expert runs one matmul over all its tokens. The same code
    runs in training and inference; only the load-balancing loss is training-only.
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.norm_topk_prob, self.aux_loss_alpha, self.seq_aux = config.norm_topk_prob, config.aux_loss_alpha, config.seq_aux
        self.gate = nn.Linear(config.hidden_size, self.n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(config) for _ in range(self.n_experts))
        self.shared_experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_shared_experts))

    def forward(self, x):
        B, T, C = x.shape
        tokens = x.reshape(-1, C)  # (N, C), N = B*T
        probs = F.softmax(self.gate(tokens), dim=-1, dtype=torch.float)  # (N, E)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)

        slot_expert = experts.flatten()  # (N*k,) one slot per (token, choice)
        order = slot_expert.argsort(stable=True)
        slot_token = order // self.top_k
        slot_weight = weights.flatten()[order].to(x.dtype)[:, None]
        counts = torch.bincount(slot_expert, minlength=self.n_experts).tolist()
        out = torch.zeros_like(tokens)
        start = 0
        for expert, n in zip(self.experts, counts):
            if n:
                idx = slot_token[start:start + n]
                out.index_add_(0, idx, (expert(tokens[idx]) * slot_weight[start:start + n]).to(out.dtype))
            start += n
        for shared in self.shared_experts:
            out = out + shared(tokens)

        aux_loss = None
        if self.training and self.aux_loss_alpha > 0:
            # Balance loss per group of tokens (each sequence, or the whole batch when not seq_aux):
            # (share of routed slots per expert, scaled so that uniform routing gives 1) · (mean gate
            # probability per expert), summed over experts, averaged over groups.
            G = B if self.seq_aux else 1
            load = torch.zeros(G, self.n_experts, device=x.device)
            load.scatter_add_(1, experts.view(G, -1), torch.ones(G, B * T * self.top_k // G, device=x.device))
            load = load / (B * T * self.top_k / G / self.n_experts)
            aux_loss = self.aux_loss_alpha * (load * probs.view(G, -1, self.n_experts).mean(dim=1)).sum(dim=1).mean()
        return out.view(B, T, C), aux_loss


class Block(GradientCheckpointingLayer):
    """With activation checkpointing on (`model.activation_checkpointing_enable()`), a training forward keeps only
    the block's inputs and recomputes the rest in the backward pass; tensors are therefore passed positionally."""

    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoEFeedForward(config) if config.use_moe else FeedForward(config)

    def forward(self, x, cos, sin, attn_mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache)
        h = self.mlp(self.post_attention_layernorm(x))
        h, aux_loss = h if isinstance(h, tuple) else (h, None)
        return x + h, aux_loss


def build_attention_mask(attention_mask, T: int, past_len: int):
    """Boolean mask (B, 1, T, S), True = may attend, or None when plain causal attention is exact.

    `attention_mask` is None, a (B, S) padding mask (1 = real token, left or right padding), or an already
    built (B, 1, T, S) boolean mask (sequence packing builds a block-diagonal one).
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.bool()
    no_padding = attention_mask is None or bool(attention_mask.all())
    if no_padding and (past_len == 0 or T == 1):
        return None  # SDPA's is_causal (or attend-to-all for one new token) is exact here
    S = past_len + T
    device = attention_mask.device if attention_mask is not None else None
    query_pos = torch.arange(past_len, S, device=device)[:, None]
    key_pos = torch.arange(S, device=device)[None, :]
    mask = (key_pos <= query_pos)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :S].bool()
        # a padding query row would attend nowhere (NaN): let it see itself; its output is never used
        mask = mask | (key_pos == query_pos)
    return mask


class MiniMindPreTrainedModel(PreTrainedModel):
    config_class = MiniMindConfig
    config: MiniMindConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _supports_sdpa = True


class MiniMindModel(MiniMindPreTrainedModel):
    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=False):
        B, T = input_ids.shape
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_len = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + T, device=input_ids.device).expand(B, T)
        x = self.dropout(self.embed_tokens(input_ids))  # (B, T, C)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        attn_mask = build_attention_mask(attention_mask, T, past_len)
        aux_losses = []
        for layer in self.layers:
            x, aux_loss = layer(x, cos, sin, attn_mask, cache)
            if aux_loss is not None:
                aux_losses.append(aux_loss)
        aux_loss = torch.stack(aux_losses).sum() if aux_losses else None
        return self.norm(x), cache, aux_loss


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                labels=None, use_cache=None, logits_to_keep=0, logits_positions=None, return_hidden=False, **kwargs):
        """`labels` are unshifted (HF convention): the loss predicts labels[t+1] from position t, -100 ignored.
        `logits_positions` (N,) flat indices into the B·T positions: logits only there, shaped (N, vocab); a chat
        row's loss needs the reply positions only, and the vocab-wide head is the costliest layer of a small model.
        `return_hidden`: no head; the final hidden states (there) come back as `hidden_states`, for a trainer's
        fused head + loss. `aux_loss` (MoE load balancing, training only) is returned separately."""
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
        hidden, cache, aux_loss = self.model(input_ids, attention_mask, position_ids, cache, use_cache)
        if logits_positions is not None:
            hidden = hidden.flatten(0, 1).index_select(0, logits_positions)  # (N, C)
        elif logits_to_keep:  # generation needs only the last position's logits
            hidden = hidden[:, -logits_to_keep:]
        if return_hidden:
            return MoeCausalLMOutputWithPast(aux_loss=aux_loss, hidden_states=hidden, cache=cache)
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=logits, cache=cache)
