"""Parameter counts and training FLOPs per token, per block type (torchtitan's MFU uses them).

Convention as torchtitan's llama3: 6 FLOPs per weight per token (forward + backward) for
every weight applied to every token, plus the attention scores, 12 * heads * head_dim *
context per layer (forward 2 matmuls x 2 FLOPs, x 3 for training), not halved for causality.
Memory layers add their scan, 3 x its forward FLOPs. The learned initial memory weights are
excluded from the 6N term: the scan applies per-chunk copies of them, counted in the scan.
"""

from torch import nn

from titans_plugin.memory import MemoryConfig


def memory_scan_forward_flops(cfg: MemoryConfig) -> int:
    """Forward FLOPs per token of the chunked scan, all heads (see kernels/chunk.py)."""
    C = cfg.chunk_size
    per_head = 2 * C * C  # A @ E inside a chunk, amortised over its C tokens
    for layer, (d_in, d_out) in enumerate(cfg.layer_dims()):
        mm = 2 * d_in * d_out
        per_head += mm  # keys through the chunk-start memory
        per_head += mm if layer > 0 else 0  # delta back through W^T
        per_head += 2 * mm  # query through W0 and S0
        per_head += 2 * C * (d_in + d_out)  # masked scores and scores @ delta
        per_head += 2 * mm  # end-of-chunk weight and momentum updates, amortised
    return per_head * cfg.n_heads


def _attention_context(block, seq_len: int) -> int:
    """Keys each query scores against."""
    cfg = getattr(block, "config", None)
    letter = block.block_type
    if letter == "A":
        return seq_len
    if letter == "C":
        return 2 * min(cfg.segment_len, seq_len) + cfg.n_persistent
    if letter in ("W", "G", "L"):
        return min(cfg.window, seq_len) + getattr(cfg, "n_persistent", 0) * (letter != "L")
    return 0


def block_flops_per_token(block: nn.Module, seq_len: int) -> int:
    params = sum(p.numel() for p in block.parameters())
    memory = getattr(block, "memory", None)
    flops = 0
    if memory is not None:
        params -= sum(p.numel() for p in memory.init_memory.parameters())
        flops += 3 * memory_scan_forward_flops(memory.config)
        if block.block_type == "C":
            # MAC also reads the memory before attending: one more query pass per layer
            flops += 3 * 2 * sum(a * b for a, b in memory.config.layer_dims()) * memory.config.n_heads
    attention = getattr(block, "attention", None)
    if attention is not None:
        flops += 12 * attention.n_heads * attention.head_dim * _attention_context(block, seq_len)
    return 6 * params + flops


def model_nparams_and_flops(model: nn.Module, seq_len: int) -> tuple[int, int]:
    """(all parameters, training FLOPs per token) of a TitansTransformer."""
    nparams = sum(p.numel() for p in model.parameters())
    flops = sum(block_flops_per_token(b, seq_len) for b in model.layers.values())
    flops += 6 * model.output.weight.numel() + 6 * model.norm.weight.numel()
    return nparams, flops
