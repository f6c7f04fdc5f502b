"""Optimizers: AdamW for every trainable parameter, or Muon for the blocks' weight matrices and AdamW for the rest.

Muon orthogonalises each matrix's momentum (Newton–Schulz), which suits the hidden 2-D weights; embeddings, the
(tied) LM head, norms, biases and the MoE router keep AdamW. Each parameter group carries its own `peak_lr`, and
the loop applies the shared schedule (`--lr_schedule`) to each, so all groups follow the same shape.
"""
import torch


def muon_parameter(name: str, param: torch.nn.Parameter) -> bool:
    """2-D weights inside the transformer blocks, except the MoE router (`mlp.gate`: a tiny classifier)."""
    return param.ndim == 2 and ".layers." in name and not name.endswith("mlp.gate.weight")


class Optimizers:
    """One or more torch optimizers stepped as one; `state_dict` keys name them so a checkpoint written with
    another `--optimizer` is refused instead of silently mis-loaded."""

    def __init__(self, optimizers: dict):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def set_lr(self, schedule):
        """schedule(peak_lr) -> lr for this step, applied to every group."""
        for g in self.param_groups:
            g["lr"] = schedule(g["peak_lr"])

    def step(self, scaler=None):
        for opt in self.optimizers.values():
            scaler.step(opt) if scaler else opt.step()
        if scaler:
            scaler.update()

    def unscale_(self, scaler):
        for opt in self.optimizers.values():
            scaler.unscale_(opt)

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict):
        if set(state) != set(self.optimizers):
            raise ValueError(f"the checkpoint holds optimizer state for {sorted(state)}, this run uses "
                             f"{sorted(self.optimizers)}: resume with the same --optimizer")
        for name, opt in self.optimizers.items():
            saved = [g.get("peak_lr") for g in state[name]["param_groups"]]
            mine = [g["peak_lr"] for g in opt.param_groups]
            if saved != mine:  # torch would fail on another group count, or quietly bring back the saved rates
                raise ValueError(f"the checkpoint's {name} groups have peak learning rates {saved}, this run's "
                                 f"{mine}: resume with the same --learning_rate, --embed_lr and --muon_lr")
            opt.load_state_dict(state[name])

    def describe(self) -> str:
        return ", ".join(f"{name}: {sum(p.numel() for g in opt.param_groups for p in g['params']) / 1e6:.2f}M params"
                         for name, opt in self.optimizers.items())


def build_optimizer(model: torch.nn.Module, args, device: torch.device) -> Optimizers:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fused = device.type in ("cuda", "cpu")  # one kernel for all tensors instead of a Python loop over them
    if args.optimizer == "adamw":
        muon, adamw = [], [p for _, p in named]
    else:
        muon = [p for n, p in named if muon_parameter(n, p)]
        adamw = [p for n, p in named if not muon_parameter(n, p)]
    # --embed_lr: the (tied) embedding in an AdamW group of its own
    embedding = [p for n, p in named if n.endswith("embed_tokens.weight") and args.embed_lr is not None]
    adamw = [p for p in adamw if all(p is not e for e in embedding)]
    groups = [{"params": ps, "peak_lr": lr} for ps, lr in ((adamw, args.learning_rate), (embedding, args.embed_lr)) if ps]
    optimizers = {}
    if groups:
        optimizers["adamw"] = torch.optim.AdamW(groups, lr=args.learning_rate, weight_decay=args.weight_decay, fused=fused)
    if muon:
        if args.muon_lr is None:  # fine-tuning: Muon's update RMS matched to AdamW's, at the stage's AdamW lr
            lr, adjust = args.learning_rate, "match_rms_adamw"
        else:  # its own lr; "original" scaling (by sqrt(rows/cols)) keeps one lr across matrix shapes
            lr, adjust = args.muon_lr, "original"
        optimizers["muon"] = torch.optim.Muon([{"params": muon, "peak_lr": lr}], lr=lr, weight_decay=args.weight_decay,
                                              momentum=args.muon_momentum, adjust_lr_fn=adjust,
                                              ns_steps=args.muon_ns_steps)
    return Optimizers(optimizers)
