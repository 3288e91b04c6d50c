"""Where this rank's shard lies in the sequence, from the tokens the trainer handed it."""

import torch
import torch.distributed as dist

from .transport import AllGatherSequence, SequenceShard


def contiguous_shard(group: dist.ProcessGroup, tokens: torch.Tensor, positions: torch.Tensor | None):
    """This rank's contiguous shard, from the tokens the trainer handed it.

    torchtitan shards every row before the model sees it, by default with its head-tail
    load balancer (rank r gets chunks r and 2P - 1 - r of 2P); `positions` [B, T_local]
    says which positions it gave. Returns (shard, this shard's tokens [B, T_local], restore),
    where restore maps hidden states [B, T_local, dim] of the contiguous shard back to the
    positions the trainer gave (its labels are laid out that way). With contiguous
    positions (context_parallel_load_balancer None) both are the identity."""
    B, T_local = tokens.shape
    shard = SequenceShard.of(group, T_local)
    if positions is None:
        return shard, tokens, lambda h: h
    mine = positions[0].to(torch.long)
    if (positions != positions[:1]).any():
        raise ValueError("context parallel: every row must hold the same positions")
    everyone = [torch.empty_like(mine) for _ in range(shard.size)]
    dist.all_gather(everyone, mine.contiguous(), group=group)
    order = torch.cat(everyone)
    if torch.equal(order, torch.arange(order.numel(), device=order.device)):
        return shard, tokens, lambda h: h
    parts = [torch.empty_like(tokens) for _ in range(shard.size)]
    dist.all_gather(parts, tokens.contiguous(), group=group)
    in_order = torch.empty(B, order.numel(), dtype=tokens.dtype, device=tokens.device)
    in_order[:, order] = torch.cat(parts, dim=1)
    tokens = in_order[:, shard.offset : shard.offset + T_local]

    def restore(h: torch.Tensor) -> torch.Tensor:
        (whole,) = AllGatherSequence.apply(shard, h)
        return whole[:, mine]

    return shard, tokens, restore
