"""The slow references for scoring and sampling: every result from one full forward pass
over the whole sequence (no caches, no pieces)."""

import torch
import torch.nn.functional as F


def full_logprobs(model, seq: list[int]) -> torch.Tensor:
    """log p(seq[t + 1] | seq[: t + 1]) for every t, from one full forward pass."""
    model.cover_positions(len(seq))
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]]))[0]
    return -F.cross_entropy(logits.double(), torch.tensor(seq[1:]), reduction="none")


def full_greedy(model, prompt: list[int], n: int, eos_id: int | None) -> list[int]:
    """Up to n greedy tokens after `prompt` (ending before `eos_id`), re-running the full
    forward pass on the whole sequence at every step."""
    seq = list(prompt)
    model.cover_positions(len(prompt) + n)
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([seq]))[0, -1].argmax())
            if token == eos_id:
                break
            seq.append(token)
    return seq[len(prompt) :]
