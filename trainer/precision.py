"""Which precision a device trains in: one place for the trainer, the benchmark and the evaluation tools."""
import torch


def native_bf16(device: torch.device) -> bool:
    """bf16 matmuls in hardware: CUDA's own check; on CPU the avx512_bf16 / AMX flags (oneDNN would emulate bf16
    on any other AVX-512 CPU, slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def autocast_dtype(name: str, device: torch.device):
    """The autocast dtype for `--dtype NAME` (None: plain fp32). auto = bf16 where the device has it natively
    (CUDA, CPUs with avx512_bf16/AMX), fp32 elsewhere; weights and optimizer state stay fp32 either way."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
