"""MiniMindConfig: the hyper-parameters of a MiniMind model, stored under Hugging Face's standard names.

MiniMind's own short names (`dim`, `n_layers`, `n_heads`, `n_kv_heads`) are accepted as aliases so that
`MiniMindConfig(dim=512, n_layers=8)` and `config.dim` work as MiniMind users expect.
"""
from transformers import PretrainedConfig


def default_intermediate_size(hidden_size: int) -> int:
    """SwiGLU hidden size: 8/3 of the model width, rounded up to a multiple of 64."""
    return 64 * ((int(hidden_size * 8 / 3) + 63) // 64)


class MiniMindConfig(PretrainedConfig):
    model_type = "minimind"
    attribute_map = {
        "dim": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "n_kv_heads": "num_key_value_heads",
    }
    default_theta = 1e6  # RoPE base used when `rope_parameters` does not give one

    vocab_size: int = 6400
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    intermediate_size: int | None = None  # None: derived from hidden_size
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    # {"rope_type": "default", "rope_theta": 1e6}, or YaRN for longer contexts:
    # {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0, "original_max_position_embeddings": 2048}
    rope_parameters: dict | None = None
    qk_norm: bool = False  # RMSNorm on each head's query and key before RoPE (Qwen3, MiniMind-3)
    dropout: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0
    # Mixture of experts (used when use_moe is True)
    use_moe: bool = False
    n_routed_experts: int = 4
    num_experts_per_tok: int = 2
    n_shared_experts: int = 1
    norm_topk_prob: bool = True
    aux_loss_alpha: float = 0.1
    seq_aux: bool = True  # balance experts within each sequence (MiniMind2); False: over the whole batch (MiniMind-3)

    def __post_init__(self, **kwargs):
        for alias, name in self.attribute_map.items():
            if alias in kwargs:
                setattr(self, name, kwargs.pop(alias))
        if self.intermediate_size is None:
            self.intermediate_size = default_intermediate_size(self.hidden_size)
        if self.rope_parameters is None and "rope_scaling" not in kwargs:
            self.rope_parameters = {"rope_type": "default", "rope_theta": kwargs.pop("rope_theta", self.default_theta)}
        super().__post_init__(**kwargs)
        self._check()

    def _check(self):
        def positive(name):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MiniMindConfig: {name} must be a positive integer, got {value!r}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "intermediate_size", "max_position_embeddings"):
            positive(name)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"MiniMindConfig: hidden_size (dim) {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"MiniMindConfig: head size {self.hidden_size // self.num_attention_heads} must be even for RoPE")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"MiniMindConfig: num_key_value_heads {self.num_key_value_heads} does not divide "
                             f"num_attention_heads {self.num_attention_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MiniMindConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.use_moe:
            positive("n_routed_experts")
            positive("num_experts_per_tok")
            if self.num_experts_per_tok > self.n_routed_experts:
                raise ValueError(f"MiniMindConfig: num_experts_per_tok {self.num_experts_per_tok} exceeds "
                                 f"n_routed_experts {self.n_routed_experts}")
            if self.n_shared_experts < 0:
                raise ValueError(f"MiniMindConfig: n_shared_experts must be >= 0, got {self.n_shared_experts}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
