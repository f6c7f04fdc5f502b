"""The training stages. A stage is the shared loop plus its data kind, its loss, a starting point and a few
defaults; each `train_*.py` is one line that runs one of these."""
import copy
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from . import losses
from .checkpoint import save_final
from .data import TrainData
from configs import RECIPES
from inference.checkpoints import checkpoint_name
from inference.generation import end_token_ids, template_opens_thinking
from inference.reasoning import TAGS as REASON_TAGS, reply_in_turn
from .modelio import StageError, check_vocab, load_model, resolve_weights
from dataset.sharing import branch_rows, prompt_branches


def unwrap(model):
    """The plain model under torch.compile's and DDP's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


class Stage:
    """A stage is declared once, here: its entry point, its --model_mode number, what it is for and where it
    starts. Everything that lists stages (eval_model's modes, "run X first" hints, the report) is derived from
    ALL_STAGES below. The objects in this module are recipes: `run()` trains a copy, so what a run sets up
    (a reference model, a teacher, rewards) lives and dies with that run."""
    name = "pretrain"  # output folder prefix: out/<name>_<dim>[_moe]
    script = "train_pretrain.py"  # the entry point that runs this stage
    model_mode = 0  # eval_model.py --model_mode number (MiniMind's); None: not loaded by mode (adapters)
    label = "pretrained model (continues text, no chat template)"
    purpose = ("predict text", ["text_ppl", "text_bpb"])  # (what it is for, the report's measures that show it)
    command_args = ""  # what the producing command needs beyond the common flags (named in "run X first" hints)
    chats = False  # its model answers in the chat template (a pretrained model continues plain text)
    run_state = ()  # attributes setup() creates for one run; run() removes them when the run ends
    description = ""
    data_kind = "pretrain"  # pretrain | sft | dpo
    default_data = "data/pretrain_hq.jsonl"
    default_from = None  # stage whose output this one starts from; None: a fresh model
    epochs, batch_size, accumulation_steps, learning_rate, max_seq_len = 1, 32, 8, 5e-4, 512
    muon_lr = None  # --optimizer muon: None = --learning_rate, RMS-matched to AdamW (see trainer/optim.py)

    @property
    def command(self) -> str:
        return f"python {self.script}{self.command_args}"

    def add_arguments(self, parser):
        pass

    def output_name(self, args) -> str:
        return checkpoint_name(self.name, args.dim, args.use_moe)

    def build_data(self, args, tokenizer, info):
        refuse_share_prefixes(args, self.data_kind == "sft")
        if not args.streaming and not Path(args.data_path).exists():
            raise StageError(f"data file {args.data_path} not found: pass --data_path, or create demo data with "
                             f"`python scripts/make_demo_data.py`")
        try:
            return TrainData.build(self.data_kind, args, tokenizer, info)
        except ValueError as e:
            raise StageError(str(e)) from None

    def prepare_model(self, model, args):
        return model

    def setup(self, args, model, tokenizer, info):
        pass

    def steps_per_epoch(self, data, args, info) -> int:
        """Optimizer steps in one epoch."""
        return data.steps_per_epoch(args.batch_size, args.accumulation_steps, info)

    def step_groups(self, data, model, epoch: int, epoch_step: int, args, info):
        """This epoch's optimizer steps from step `epoch_step` on (a resumed epoch starts there), each a list of the
        micro-batches whose gradients it accumulates: accumulation_steps of them (fewer in an epoch's last step)."""
        batches = data.micro_batches(epoch, args.batch_size, args.seed, info, epoch_step * args.accumulation_steps)
        while group := [b for _, b in zip(range(args.accumulation_steps), batches)]:
            yield group

    def train_mode(self, model):
        pass

    def on_step(self, step: int, total_steps: int):
        """Called before each optimizer step (stages with schedules of their own use it)."""

    def token_weights(self, labels, args):
        """Per-label loss weights for labels (N,), or None for all 1."""
        return None

    def loss(self, model, batch, args):
        """(sum of per-token losses, {metric name: sum}) for one micro-batch. The LM head runs only at the labelled
        positions (the collator's loss_positions: prompt, padding and system positions skip it). Under autocast it is
        fused with the cross entropy (losses.linear_cross_entropy: half the time of the logits path at 4,096
        positions on a CPU, bench.py --loss_head); in fp32 its recomputed head matmul costs more than that saves at
        width 512, and under FSDP the head's weight is sharded outside the forward, so there the model applies the
        head and returns the logits."""
        fused = torch.is_autocast_enabled(batch["input_ids"].device.type) and not getattr(args, "fsdp", False)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], use_cache=False, logits_positions=batch["loss_positions"],
                    return_hidden=fused)
        labels = batch["labels"].flatten()[batch["loss_positions"]]
        if fused:
            head = unwrap(model).get_output_embeddings().weight
            token_ce = losses.linear_cross_entropy(out.hidden_states, head, labels)
        else:
            token_ce = losses.token_cross_entropy(out.logits, labels)
        weights = self.token_weights(labels, args)
        metrics = {}
        if weights is None:
            loss = token_ce.sum()
        else:  # the weighted loss is what trains; the plain cross entropy stays comparable with other runs
            loss = (token_ce * weights).sum()
            metrics["ce"] = token_ce.detach().sum()
        if out.aux_loss is not None:  # MoE balance loss is a per-batch mean: weight it like the batch's tokens
            loss = loss + out.aux_loss * batch["num_items"]
        return loss, metrics

    def save(self, model, tokenizer, args, out: Path) -> Path:
        return save_final(unwrap(model), tokenizer, out)


def refuse_share_prefixes(args, conversations: bool):
    """--share_prefixes packs conversation files (pretraining text has no loss-free lead to share; GRPO and the agent
    stage share each prompt in their loss by themselves): elsewhere it would do nothing, so it is refused."""
    if getattr(args, "share_prefixes", False) and not conversations:
        raise StageError("--share_prefixes is for the conversation stages (SFT, LoRA, reasoning): this stage's data "
                         "has no shared loss-free prefix to pack")


class Pretrain(Stage):
    description = "Pretrain MiniMind from scratch on plain text ({'text': ...} jsonl): next-token loss on every token."
    muon_lr = 0.02  # from scratch Muon takes its own, larger lr (scripts/time_to_loss.py measures it)

    def add_arguments(self, p):
        # here and not for every stage: a recipe's rates are for a model built from scratch and would wreck a trained one
        p.add_argument("--recipe", default=None,
                       help=f"a set of training flags (configs/recipes/NAME.yaml or a path; {', '.join(RECIPES)}): 'fast' "
                            "reaches a given loss in a fraction of the default's time (Muon, so not with --fsdp, and the "
                            "embedding at its own rate; see the file); --config and command-line flags override it")


class FullSFT(Stage):
    name, script, model_mode = "full_sft", "train_full_sft.py", 1
    label = "supervised fine-tuned chat model"
    purpose = ("answer in chats", ["chat_ppl"])
    chats = True
    description = "Supervised fine-tuning on conversations ({'conversations': [...]} jsonl): loss on assistant tokens only."
    data_kind = "sft"
    default_data = "data/sft_mini_512.jsonl"
    default_from = "pretrain"
    epochs, batch_size, accumulation_steps, learning_rate = 2, 16, 1, 5e-5

    def add_arguments(self, p):
        g = p.add_argument_group("mixing general data (against forgetting)")
        g.add_argument("--mix_data", default=None,
                       help="general data mixed into every epoch (conversations or {\"text\"} jsonl, e.g. the SFT file), so "
                            "the stage adds to the model instead of overwriting what it knew; the choice of rows is "
                            "seeded per epoch and the same on --resume")
        g.add_argument("--mix_ratio", type=float, default=0.3,
                       help="share of each epoch's rows taken from --mix_data (0 < ratio < 1)")

    def build_data(self, args, tokenizer, info):
        if args.mix_data is not None:
            if not Path(args.mix_data).exists():
                raise StageError(f"--mix_data {args.mix_data} not found")
            if not 0.0 < args.mix_ratio < 1.0:
                raise StageError(f"--mix_ratio must be between 0 and 1 (exclusive), got {args.mix_ratio}")
        return super().build_data(args, tokenizer, info)


class LoRA(FullSFT):
    name, script, model_mode = "lora", "train_lora.py", None
    label = "LoRA adapter (eval_model.py --lora_name NAME)"
    purpose = ("the adapter's data (identity or domain)", ["identity", "identity_clean", "domain_ppl"])
    description = "Train a LoRA adapter (peft) on conversations; the base model stays frozen and unchanged on disk."
    default_data = "data/lora_identity.jsonl"
    default_from = "full_sft"
    # measured on the demo identity file (dim 128, half SFT chats mixed in): rank 16 at 5e-3 for 20 epochs learns
    # the identity on 10 of 10 held-out phrasings at 1.01x the base's chat perplexity; rank 8 at 2e-3 leaves it
    # garbled, 12 epochs leave broken sentences; the former 1e-4 x 10 epochs of 32 rows barely moves an adapter
    epochs, batch_size, accumulation_steps, learning_rate = 20, 8, 1, 5e-3
    muon_lr = 0.02  # adapters start at zero like a fresh model; measured on the demo identity data

    def add_arguments(self, p):
        super().add_arguments(p)
        g = p.add_argument_group("LoRA")
        g.add_argument("--lora_name", default=None, help="adapter name (default: the data file's name, lora_medical.jsonl → lora_medical); saved to OUT_DIR/lora/<name>_<dim>")
        g.add_argument("--lora_rank", type=int, default=16, help="rank r of the low-rank update")
        g.add_argument("--lora_alpha", type=float, default=32, help="scaling alpha (update scaled by alpha/r)")
        g.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the adapter input")
        g.add_argument("--lora_targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                       help="comma-separated module names that get adapters")
        g.add_argument("--merge", action="store_true", help="also write the base with the adapter merged in, to OUT_DIR/<lora_name>_merged_<dim>")

    def lora_name(self, args):
        return args.lora_name or Path(args.data_path).stem

    def output_name(self, args):
        return f"lora/{checkpoint_name(self.lora_name(args), args.dim, args.use_moe)}"

    def prepare_model(self, model, args):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                            target_modules=[t.strip() for t in args.lora_targets.split(",") if t.strip()],
                            bias="none", task_type="CAUSAL_LM")
        return get_peft_model(model, config)

    def save(self, model, tokenizer, args, out: Path) -> Path:
        model = unwrap(model)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)  # the adapter only: adapter_config.json + adapter_model.safetensors
        if args.merge:
            merged_dir = Path(args.out_dir) / checkpoint_name(f"{self.lora_name(args)}_merged", args.dim, args.use_moe)
            save_final(copy.deepcopy(model).merge_and_unload(), tokenizer, merged_dir)
        return out


class DPO(Stage):
    name, script, model_mode = "rlhf", "train_dpo.py", 2
    label = "DPO-aligned chat model"
    purpose = ("prefer chosen replies", ["dpo_reward_acc", "pref_acc"])
    chats = True
    description = ("Direct Preference Optimization on {'chosen': [...], 'rejected': [...]} pairs against a frozen "
                   "copy of the starting model (sigmoid loss on response tokens).")
    data_kind = "dpo"
    default_data = "data/dpo.jsonl"
    default_from = "full_sft"
    epochs, batch_size, accumulation_steps, learning_rate, max_seq_len = 1, 4, 1, 1e-6, 1024

    run_state = ("reference",)

    def add_arguments(self, p):
        p.add_argument_group("DPO").add_argument("--beta", type=float, default=0.1, help="DPO temperature β")

    def setup(self, args, model, tokenizer, info):
        self.reference = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    def loss(self, model, batch, args):
        n = batch["num_items"]  # pairs; rows [0, n) are chosen, [n, 2n) rejected
        keep = batch["loss_positions"]  # logits only at the response tokens
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"], use_cache=False, logits_positions=keep)
        labels, rows = batch["labels"].flatten()[keep], keep // batch["labels"].shape[1]
        policy = losses.sequence_logprobs(model(**inputs).logits, labels, rows, 2 * n)
        with torch.no_grad():
            reference = losses.sequence_logprobs(self.reference(**inputs).logits, labels, rows, 2 * n)
        loss, chosen, rejected = losses.dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], args.beta)
        margin = chosen - rejected
        return loss, {"reward_chosen": chosen.sum(), "reward_rejected": rejected.sum(),
                      "reward_margin": margin.sum(), "accuracy": (margin > 0).float().sum()}


class DistillReason(FullSFT):
    name, script, model_mode = "reason", "train_distill_reason.py", 3
    label = "reasoning model (<think>…</think><answer>…</answer>)"
    purpose = ("<think>/<answer> replies", ["well_formed"])
    description = ("Reasoning distillation on conversations whose replies are <think>…</think><answer>…</answer>: "
                   "assistant-token loss with the tag tokens weighted by --tag_weight.")
    default_data = "data/r1_mix_1024.jsonl"
    default_from = "rlhf"
    epochs, batch_size, accumulation_steps, learning_rate, max_seq_len = 1, 8, 1, 1e-6, 1024

    run_state = ("tag_ids",)

    def add_arguments(self, p):
        super().add_arguments(p)
        p.add_argument_group("reasoning").add_argument(
            "--tag_weight", type=float, default=10.0, help="loss weight of the <think>/<answer> tag tokens (others 1)")

    def setup(self, args, model, tokenizer, info):
        ids = [tokenizer.convert_tokens_to_ids(t) for t in REASON_TAGS]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise StageError(f"the tokenizer lacks single tokens for {REASON_TAGS}; use the project's tokenizer")
        self.tag_ids = torch.tensor(ids, device=info.device)

    def token_weights(self, labels, args):
        return losses.tag_token_weights(labels, self.tag_ids, args.tag_weight)


class Distillation(FullSFT):
    name, script, model_mode = "distill", "train_distillation.py", 5
    label = "distilled (teacher → student) chat model"
    purpose = ("match the teacher", ["chat_ppl"])
    command_args = " --teacher TEACHER_DIR"
    description = ("White-box knowledge distillation: a student learns from a teacher's logits on conversations, "
                   "loss = α·CE + (1−α)·T²·KL(teacher‖student) on assistant tokens.")
    default_from = "full_sft"
    epochs, batch_size, accumulation_steps, learning_rate = 2, 16, 1, 5e-5

    run_state = ("teacher",)

    def add_arguments(self, p):
        super().add_arguments(p)
        g = p.add_argument_group("distillation")
        g.add_argument("--teacher", required=False, default=None,
                       help="teacher model: a folder, or a stage name resolved with --teacher_dim (e.g. full_sft)")
        g.add_argument("--teacher_dim", type=int, default=768, help="dim used to resolve a teacher stage name")
        g.add_argument("--alpha", type=float, default=0.5, help="weight of the label cross-entropy (1-α goes to KL)")
        g.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T for the KL term")

    def setup(self, args, model, tokenizer, info):
        if not args.teacher:
            raise StageError("--teacher is required: a model folder (e.g. out/full_sft_768) or a stage name")
        path = resolve_weights(args.teacher, args.out_dir, args.teacher_dim, False, flag="--teacher")
        self.teacher = load_model(path).to(info.device).eval().requires_grad_(False)
        check_vocab(self.teacher, tokenizer, path)
        student_vocab = unwrap(model).config.vocab_size
        if self.teacher.config.vocab_size != student_vocab:
            raise StageError(f"teacher {path} has vocab_size {self.teacher.config.vocab_size}, the student "
                             f"{student_vocab}: distillation needs the same tokenizer")

    def loss(self, model, batch, args):
        keep = batch["loss_positions"]  # both losses cover the labelled positions only
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      position_ids=batch["position_ids"], use_cache=False)
        out = model(**inputs, logits_positions=keep)
        with torch.no_grad():  # the teacher may be any causal LM: its logits are taken whole, then selected
            teacher_logits = self.teacher(**inputs).logits.flatten(0, 1).index_select(0, keep)
        labels = batch["labels"].flatten()[keep]
        loss, ce, kl = losses.distillation_loss(out.logits, teacher_logits, labels, args.alpha, args.temperature)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss * batch["num_items"]
        return loss, {"ce": ce, "kl": kl}


class GRPO(Stage):
    """GRPO. One optimizer step: `rollouts()` samples G completions per prompt (through `rollout()`, one prompt
    batch at a time), scores them and computes the advantages; `loss()` trains on them. A subclass with another
    kind of rollout (multi-turn, tools) overrides `rollout()` only: it returns the sequences, which completion
    tokens the model generated (the loss covers only those) and the reward scores, and the options below
    (--num_iterations, --loss_type, --scale_rewards, --mask_truncated_completions) apply to it unchanged."""
    name, script, model_mode = "grpo", "train_grpo.py", 4
    label = "RL-tuned (GRPO) reasoning model"
    purpose = ("reasoning (RL reward)", ["well_formed"])
    chats = True
    description = ("Reinforcement learning with verifiable rewards (GRPO): sample a group of completions per prompt, "
                   "score them with rule-based rewards, and push the policy towards the better ones of each group, "
                   "with a KL penalty to a frozen reference. Prompts come from conversation jsonl (the last "
                   "assistant reply is the reference answer).")
    data_kind = "prompts"
    default_data = "data/r1_mix_1024.jsonl"
    default_from = "reason"
    epochs, batch_size, accumulation_steps, learning_rate, max_seq_len = 1, 4, 1, 1e-6, 256

    run_state = ("rewards", "tokenizer", "eos_ids", "reference", "progress", "thinking")

    def add_arguments(self, p):
        g = p.add_argument_group("GRPO")
        g.add_argument("--num_generations", type=int, default=8, help="completions sampled per prompt (the group size G)")
        g.add_argument("--max_new_tokens", type=int, default=256, help="completion length limit")
        g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for the completions")
        g.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling for the completions")
        g.add_argument("--beta", type=float, default=0.04, help="weight of the KL penalty to the reference model")
        g.add_argument("--clip_eps", type=float, default=0.2, help="PPO-style clipping of the probability ratio")
        g.add_argument("--num_iterations", type=int, default=1,
                       help="optimizer steps per rollout batch (μ): each batch of sampled completions is reused μ "
                            "times against the log-probs of the policy that sampled it, so the clip bounds how far "
                            "the policy moves (the clip fraction is logged); 1 = one step per batch (the ratio is "
                            "then always 1). A run resumed in the middle of a batch's μ steps samples it again")
        g.add_argument("--loss_type", choices=losses.LOSS_TYPES, default="grpo",
                       help="normalisation of the token losses: grpo = mean over each completion's tokens, then over "
                            "completions; dr_grpo = sum over tokens / (completions × max_new_tokens; train_agent.py: × "
                            "(max_tool_turns + 1) replies), no length bias; dapo = mean over all completion tokens of the optimizer step")
        g.add_argument("--scale_rewards", choices=("group", "batch", "none"), default="group",
                       help="advantage = reward − group mean, divided by the group's std (group), by the std of "
                            "this process's rewards of the optimizer step (batch; not gathered across ranks), or not divided "
                            "(none, Dr. GRPO)")
        g.add_argument("--mask_truncated_completions", action="store_true",
                       help="leave completions cut at --max_new_tokens (no end-of-turn token) out of the loss; "
                            "they still count in the rewards and advantages (train_agent.py: every trajectory that "
                            "did not end with an answer, also those stopped by --max_tool_turns or the length limit)")
        g.add_argument("--sampler", choices=("engine", "generate"), default="engine",
                       help="how completions are sampled: engine = inference/engine.py (each prompt prefilled once "
                            "for its G samples, one batched decode loop), generate = transformers' generate() "
                            "(slower; always used with --fsdp, whose ranks must decode in lockstep)")
        g.add_argument("--rewards", default="format,accuracy", help="comma-separated reward names (trainer/rewards.py)")
        g.add_argument("--format_weight_start", type=float, default=2.0,
                       help="weight of the format reward at the start, decaying linearly to 1 by the end")

    def build_data(self, args, tokenizer, info):
        from dataset import PromptCollator, PromptSet

        refuse_share_prefixes(args, False)
        if not Path(args.data_path).exists():
            raise StageError(f"data file {args.data_path} not found: pass --data_path (conversation jsonl)")
        # prompts open the <think> block (the thinking switch) where the template has one: this stage trains reasoning
        dataset = PromptSet(args.data_path, tokenizer, args.max_seq_len, args.skip_bad_lines,
                            open_thinking=template_opens_thinking(tokenizer))
        return TrainData(dataset, PromptCollator(tokenizer.pad_token_id, args.num_generations), args, streaming=False)

    def setup(self, args, model, tokenizer, info):
        from .rewards import get_rewards

        if args.num_generations < 2:
            raise StageError("--num_generations must be at least 2 (advantages compare completions of a group)")
        if args.num_iterations < 1:
            raise StageError("--num_iterations must be at least 1")
        try:
            self.rewards = get_rewards(args.rewards)
        except ValueError as e:
            raise StageError(str(e)) from None
        self.tokenizer = tokenizer
        self.eos_ids = end_token_ids(unwrap(model), tokenizer)  # where generation and serving stop too
        self.thinking = template_opens_thinking(tokenizer)  # as build_data prompted
        self.reference = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.progress = 0.0

    def on_step(self, step, total_steps):
        self.progress = step / max(1, total_steps)

    def reward_weights(self, args, device):
        weights = [args.format_weight_start + (1 - args.format_weight_start) * self.progress if name == "format" else 1.0
                   for name in self.rewards]
        return torch.tensor(weights, device=device)

    def completion_limit(self, args) -> int:
        """The longest a completion can be (dr_grpo divides by it)."""
        return args.max_new_tokens

    # ---- rollouts

    def steps_per_epoch(self, data, args, info):
        return super().steps_per_epoch(data, args, info) * args.num_iterations

    def step_groups(self, data, model, epoch, epoch_step, args, info):
        """Rollout steps: each group of accumulation_steps prompt batches (fewer in an epoch's last group) is
        sampled (lazily, so with the policy of that moment) and then served num_iterations times, one optimizer
        step per pass. The sampling seed depends only on (seed, epoch, rollout index, rank), so a resumed run
        samples what the first did."""
        mu, per_step = args.num_iterations, args.accumulation_steps
        index, first_pass = divmod(epoch_step, mu)
        prompts = data.micro_batches(epoch, args.batch_size, args.seed, info, index * per_step)
        while True:
            group = [b for _, b in zip(range(per_step), prompts)]
            if not group:
                return
            seed = ((args.seed * 1_000_003 + epoch) * 1_000_003 + index) * 1_009 + info.rank
            rollouts = self.rollouts(model, group, args, info, seed)
            for _ in range(first_pass, mu):
                yield rollouts
            index, first_pass = index + 1, 0

    @torch.no_grad()
    def generate(self, model, input_ids, attention_mask, num_samples: int, args, generator):
        """`num_samples` sampled completions of each left-padded prompt (rows prompt-major), as the engine's
        Completions (tokens padded after each row's end token, lengths, finished)."""
        from inference.engine import Completions, generate_batch

        policy = unwrap(model)
        sharded = getattr(args, "fsdp", False) and torch.distributed.is_initialized()
        pad = self.tokenizer.pad_token_id
        if args.sampler == "engine" and not sharded:
            return generate_batch(policy, input_ids, attention_mask, num_samples=num_samples,
                                  max_new_tokens=args.max_new_tokens, eos_token_ids=self.eos_ids, pad_token_id=pad,
                                  temperature=args.temperature, top_p=args.top_p, generator=generator)
        # generate() draws from the global RNG: seed it from our generator, leave it as it was after
        devices = [input_ids.device] if input_ids.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device)))
            was_training = policy.training
            policy.eval()
            sequences = policy.generate(
                input_ids=input_ids.repeat_interleave(num_samples, dim=0),
                attention_mask=attention_mask.repeat_interleave(num_samples, dim=0), do_sample=True,
                temperature=args.temperature, top_p=args.top_p, top_k=0, max_new_tokens=args.max_new_tokens,
                pad_token_id=pad, eos_token_id=self.eos_ids or None,
                synced_gpus=sharded)  # sharded, every rank must run the same number of forward passes
            policy.train(was_training)
        tokens = sequences[:, input_ids.shape[1]:]
        is_eos = torch.isin(tokens, torch.as_tensor(self.eos_ids, dtype=torch.long, device=tokens.device))
        finished = is_eos.any(dim=1)
        lengths = torch.where(finished, is_eos.int().argmax(dim=1) + 1, tokens.shape[1])  # up to the first end
        return Completions(tokens, lengths, finished)

    def rollout(self, model, batch, args, generator) -> dict:
        """One prompt batch's completions, scored. Returns, for N = prompts × G rows (G consecutive rows per prompt):
          sequences (N, P + C)      prompt and completion token ids
          prompt_mask (N, P)        1 on real prompt tokens (prompts are left-padded)
          completion_mask (N, C)    True on the completion tokens the model generated: the loss covers these
          completion_attention (N, C)  (optional) True on every real completion token; defaults to
                                    completion_mask (a multi-turn rollout adds tool results the model reads but
                                    did not write)
          finished (N,)             the completion ended by itself (False: cut at the length limit)
          scores (N, len(self.rewards))  each reward of each completion."""
        G = args.num_generations
        prompts, prompt_mask = batch["input_ids"], batch["attention_mask"]
        completions = self.generate(model, prompts, prompt_mask, G, args, generator)
        completion_mask = completions.mask
        pad = self.tokenizer.pad_token_id
        texts = self.tokenizer.batch_decode(completions.tokens.masked_fill(~completion_mask, pad),
                                            skip_special_tokens=True)
        texts = [reply_in_turn(t, self.thinking) for t in texts]  # judged as the turn reads
        references = [r for r in batch["references"] for _ in range(G)]
        scores = torch.tensor([[fn(t, r) for fn in self.rewards.values()] for t, r in zip(texts, references)],
                              dtype=torch.float, device=prompts.device)
        return {"sequences": torch.cat([prompts.repeat_interleave(G, dim=0), completions.tokens], dim=1),
                "prompt_mask": prompt_mask.repeat_interleave(G, dim=0), "completion_mask": completion_mask,
                "finished": completions.finished, "scores": scores}

    def rollouts(self, model, prompt_batches, args, info, seed: int) -> list[dict]:
        """One optimizer step's rollout micro-batches, one per prompt batch: `rollout()`'s output plus the total
        reward, the advantages (over all the step's batches, for --scale_rewards batch), the loss mask and the
        token weight --loss_type dapo needs."""
        from .distributed import all_reduce_sum
        from .precision import autocast_dtype

        device, G = info.device, args.num_generations
        amp = autocast_dtype(args.dtype, device)
        generator = torch.Generator(device=device).manual_seed(seed)
        out = []
        for batch in prompt_batches:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                r = self.rollout(model, batch, args, generator)
            r.setdefault("completion_attention", r["completion_mask"])
            loss_mask = r["completion_mask"]
            if args.mask_truncated_completions:
                loss_mask = loss_mask & r["finished"][:, None]
            r.update(loss_mask=loss_mask, reward=(r["scores"] * self.reward_weights(args, device)).sum(dim=1),
                     num_items=batch["num_items"], num_tokens=int(r["completion_mask"].sum()),
                     saved={})  # filled by the first loss() on this rollout: old and reference log-probs
            out.append(r)
        rewards = torch.cat([r["reward"] for r in out])
        advantages = losses.group_advantages(rewards, G, args.scale_rewards).split([len(r["reward"]) for r in out])
        # dapo: one token weight for the whole optimizer step, over all ranks
        totals = all_reduce_sum(torch.tensor([float(sum(r["num_items"] for r in out)),
                                              float(sum(r["loss_mask"].sum() for r in out))], device=device), info)
        items_per_token = float(totals[0] / totals[1].clamp(min=1))
        for r, adv in zip(out, advantages):
            r.update(advantages=adv, items_per_token=items_per_token)
        return out

    @staticmethod
    def model_inputs(batch, group_size: int) -> dict:
        """The forward inputs of a rollout, with `logits_positions` at the N·C positions that predict the completion
        tokens (the head runs only there). A group's rows share one prompt: rows that hold a prompt once with several
        of its completions as branches (dataset/sharing.py) are used when they compute fewer positions and no more
        attention than the padded rows do (long prompts, e.g. a tools block, and short replies), with as many
        completions to a row as that allows; the log-probs are the same either way (up to float rounding)."""
        sequences, prompt_mask, completion = batch["sequences"], batch["prompt_mask"], batch["completion_attention"]
        (N, P), C = prompt_mask.shape, completion.shape[1]
        if group_size > 1:
            prompt_lengths = prompt_mask[::group_size].sum(dim=1).tolist()
            lengths = completion.sum(dim=1).tolist()
            for per_row in range(group_size, 1, -1):
                layout = branch_rows(prompt_lengths, lengths, group_size, per_row)
                rows, width = len(layout), max(w for _, _, w in layout)
                if rows * width <= N * (P + C) and rows * width ** 2 <= N * (P + C) ** 2:
                    shared = prompt_branches(sequences, prompt_mask, prompt_lengths, lengths, layout)
                    predict_at = shared.pop("predict_at")
                    return dict(shared, use_cache=False, logits_positions=predict_at.flatten())
        attention_mask = torch.cat([prompt_mask, completion.long()], dim=1)
        predict_at = (torch.arange(N, device=sequences.device)[:, None] * (P + C) + P - 1
                      + torch.arange(C, device=sequences.device)[None, :])
        return dict(input_ids=sequences, attention_mask=attention_mask, use_cache=False,
                    position_ids=(attention_mask.cumsum(dim=1) - 1).clamp(min=0), logits_positions=predict_at.flatten())

    def loss(self, model, batch, args):
        sequences, prompt_mask, loss_mask = batch["sequences"], batch["prompt_mask"], batch["loss_mask"]
        P = prompt_mask.shape[1]
        saved = batch["saved"]
        if "inputs" not in saved:  # built once per rollout; later passes (--num_iterations) reuse them
            saved["inputs"] = self.model_inputs(batch, args.num_generations)
        inputs = saved["inputs"]
        targets = sequences[:, P:].masked_fill(~loss_mask, losses.IGNORE)

        def completion_logprobs(m):  # (N, C)
            return -losses.token_cross_entropy(m(**inputs).logits, targets.flatten()).view_as(targets)

        logprobs = completion_logprobs(model)
        if "old" not in saved:
            # the first pass over this rollout: the policy is still the one that sampled it, so its log-probs are
            # the old ones every later pass (--num_iterations) compares against
            saved["old"] = logprobs.detach()
            with torch.no_grad():
                saved["reference"] = completion_logprobs(self.reference)
        weights = losses.grpo_token_weights(loss_mask, args.loss_type, self.completion_limit(args),
                                            batch["items_per_token"])
        loss, kl, clipped = losses.grpo_loss(logprobs, saved["old"], saved["reference"], batch["advantages"],
                                             loss_mask, args.clip_eps, args.beta, weights)
        G, total = args.num_generations, batch["reward"]
        group_std = total.view(-1, G).std(dim=1).repeat_interleave(G)
        sums = {f"reward_{name}": batch["scores"][:, i].sum() for i, name in enumerate(self.rewards)}
        sums.update(reward=total.sum(), reward_std=group_std.sum(), kl=kl.sum(), clip_fraction=clipped.sum(),
                    completion_length=batch["completion_mask"].sum().float(),
                    truncated=(~batch["finished"]).float().sum())
        return loss, sums


PRETRAIN, FULL_SFT, LORA, DPO_STAGE, REASON, DISTILL = Pretrain(), FullSFT(), LoRA(), DPO(), DistillReason(), Distillation()
GRPO_STAGE = GRPO()
from .agent import Agent  # noqa: E402  (a GRPO subclass in its own module, imported once GRPO exists)
AGENT_STAGE = Agent()
ALL_STAGES = (PRETRAIN, FULL_SFT, LORA, DPO_STAGE, REASON, DISTILL, GRPO_STAGE, AGENT_STAGE)  # pipeline order

# Derived tables (nothing else declares stages)
MODEL_MODES = dict(sorted((s.model_mode, s) for s in ALL_STAGES if s.model_mode is not None))
PRODUCED_BY = {s.name: s.command for s in MODEL_MODES.values()}  # stages whose output is a model folder
STARTS_FROM = {s.name: s.default_from for s in ALL_STAGES}
PURPOSE = {s.name: s.purpose for s in ALL_STAGES}
