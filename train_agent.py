"""Agentic RL: GRPO over multi-turn rollouts whose tool calls run (trainer/agent.py). Run with --help for every flag;
`torchrun --nproc_per_node N train_agent.py ...` trains on N processes."""
from trainer import AGENT_STAGE, run

if __name__ == "__main__":
    run(AGENT_STAGE)
