"""Log-likelihoods of text under a model, read through its incremental path in pieces.

Every function takes token ids and a model with `forward_cached`; text handling (which
tokens a request means) belongs to the caller. Only per-token results are kept, never a
[T, vocab] logits tensor for the whole input, so memory is bounded by the piece size and
the attention caches."""

import torch

from .trained import Trained


@torch.no_grad()
def token_logprobs(model, inputs: torch.Tensor, targets: torch.Tensor, piece: int):
    """For inputs [B, T] and the tokens that follow them, targets [B, T]: the
    log-probability of every target [B, T] (softmax in fp32, or the logits' dtype if wider) and whether it is the argmax
    [B, T]. Rows are read together from position 0; a row's results do not depend on what
    follows it (the model is causal), so rows may be right-padded."""
    B, T = inputs.shape
    model.cover_positions(T)
    logprobs = torch.empty(B, T, dtype=torch.float64, device=inputs.device)
    greedy = torch.empty(B, T, dtype=torch.bool, device=inputs.device)
    caches = None
    for lo in range(0, T, piece):
        hi = min(lo + piece, T)
        logits, caches = model.forward_cached(inputs[:, lo:hi], caches)
        lp = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
        logprobs[:, lo:hi] = lp.gather(-1, targets[:, lo:hi, None])[..., 0].double()
        greedy[:, lo:hi] = lp.argmax(-1) == targets[:, lo:hi]
    return logprobs, greedy


def continuation_scores(
    trained: Trained, pairs: list[tuple[list[int], list[int]]], batch_size: int, progress=None
) -> list[tuple[float, bool]]:
    """(log-probability, greedy) of each continuation after its context (token ids; an
    empty context means the start of a document). Requests are batched longest first,
    right-padded; results come back in the order given. `progress(n)` is called after
    every batch of n requests."""
    rows = []
    for context, continuation in pairs:
        if not continuation:
            raise ValueError("a continuation to score must have at least one token")
        seq = [trained.prefix_id, *context, *continuation]
        rows.append((seq[:-1], seq[1:], len(continuation)))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    for start in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[start : start + batch_size]]
        width = len(batch[0][0])
        inputs = torch.full((len(batch), width), trained.prefix_id, dtype=torch.long)
        targets = torch.zeros_like(inputs)
        for b, (x, y, _) in enumerate(batch):
            inputs[b, : len(x)] = torch.tensor(x)
            targets[b, : len(y)] = torch.tensor(y)
        device = trained.device
        lp, greedy = token_logprobs(trained.model, inputs.to(device), targets.to(device), trained.seq_len)
        for b, i in enumerate(order[start : start + batch_size]):
            end, n = len(batch[b][0]), batch[b][2]
            out[i] = (lp[b, end - n : end].sum().item(), bool(greedy[b, end - n : end].all()))
        if progress is not None:
            progress(len(batch))
    return out


def document_logprob(trained: Trained, ids: list[int]) -> float:
    """The log-probability of a whole document (its first token after the document prefix),
    streamed through the memory in pieces of the training length: no truncation, every
    token predicted once with everything before it in the memory and caches."""
    if not ids:
        return 0.0
    seq = [trained.prefix_id, *ids]
    device = trained.device
    inputs = torch.tensor([seq[:-1]], device=device)
    targets = torch.tensor([seq[1:]], device=device)
    lp, _ = token_logprobs(trained.model, inputs, targets, trained.seq_len)
    return lp.sum().item()
