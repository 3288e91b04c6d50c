"""Parameter count and training FLOPs per token of a model (torchtitan's MFU uses them).

Convention as torchtitan's llama3; each block type counts its own FLOPs
(TitansBlockBase.flops_per_token), the model adds its output projection and final norm."""

from .model import TitansTransformer


def model_nparams_and_flops(model: TitansTransformer, seq_len: int) -> tuple[int, int]:
    """(all parameters, training FLOPs per token) of a TitansTransformer."""
    nparams = sum(p.numel() for p in model.parameters())
    flops = sum(block.flops_per_token(seq_len) for block in model.blocks())
    flops += 6 * model.output.weight.numel() + 6 * model.norm.weight.numel()
    return nparams, flops
