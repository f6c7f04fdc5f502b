"""The shared training core: one loop (`run`) and the stages it runs."""
from .loop import run
from .stages import AGENT_STAGE, DISTILL, DPO_STAGE, FULL_SFT, GRPO_STAGE, LORA, PRETRAIN, REASON

__all__ = ["run", "PRETRAIN", "FULL_SFT", "LORA", "DPO_STAGE", "REASON", "DISTILL", "GRPO_STAGE", "AGENT_STAGE"]
