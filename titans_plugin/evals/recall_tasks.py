"""Synthetic long-range recall tasks: the answer lies farther back than the attention window.

Token layout (vocabulary of VOCAB ids):
    0 .. N_VALUES-1                       values / passkeys (the answers)
    N_VALUES .. N_VALUES+N_KEYS-1         keys (MQAR)
    then the markers NEEDLE, QUERY, SEP,  and the rest is filler

passkey: filler ... NEEDLE p ... filler ... QUERY -> p
    one passkey among N_VALUES; the needle sits at least `min_distance` tokens before the
    query; chance is 1 / N_VALUES.
mqar (multi-query associative recall): k1 v1 k2 v2 ... kN vN, filler, then SEP k_i -> v_i
    for every pair in random order; every query is at least `min_distance` tokens after its
    pair; chance is 1 / N_VALUES per query.

Each batch returns tokens [B, T] and targets [B, T] with -100 everywhere except at the
positions whose next token is an answer: the loss and the accuracy count only answers.
"""

import torch

N_VALUES, N_KEYS = 16, 16
NEEDLE, QUERY, SEP = N_VALUES + N_KEYS, N_VALUES + N_KEYS + 1, N_VALUES + N_KEYS + 2
FILLER_START = SEP + 1
VOCAB = 64
IGNORE = -100
TASKS = ("passkey", "mqar")


def _filler(B: int, T: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(FILLER_START, VOCAB, (B, T), generator=g)


def passkey_batch(B: int, T: int, min_distance: int, g: torch.Generator):
    """The needle is placed uniformly in [1, T - 2 - min_distance]; the query is the last
    token, so its prediction (the passkey) is the target at position T - 1."""
    if min_distance + 4 > T:
        raise ValueError(f"passkey: seq_len {T} must be >= min_distance {min_distance} + 4")
    tokens = _filler(B, T, g)
    targets = torch.full((B, T), IGNORE)
    keys = torch.randint(0, N_VALUES, (B,), generator=g)
    pos = torch.randint(1, T - 2 - min_distance, (B,), generator=g)
    rows = torch.arange(B)
    tokens[rows, pos] = NEEDLE
    tokens[rows, pos + 1] = keys
    tokens[:, -1] = QUERY
    targets[:, -1] = keys
    return tokens, targets


def mqar_batch(B: int, T: int, min_distance: int, g: torch.Generator, n_pairs: int = 4):
    """Pairs at the start, queries (SEP key) at the end; filler between keeps every query
    at least min_distance tokens after its pair."""
    span = 2 * n_pairs
    if 2 * span + min_distance > T:
        raise ValueError(f"mqar: seq_len {T} must be >= 4 * n_pairs + min_distance")
    tokens = _filler(B, T, g)
    targets = torch.full((B, T), IGNORE)
    keys = torch.stack([torch.randperm(N_KEYS, generator=g)[:n_pairs] for _ in range(B)]) + N_VALUES
    values = torch.randint(0, N_VALUES, (B, n_pairs), generator=g)
    tokens[:, 0:span:2], tokens[:, 1:span:2] = keys, values
    order = torch.stack([torch.randperm(n_pairs, generator=g) for _ in range(B)])
    q0 = T - span
    tokens[:, q0::2] = SEP
    tokens[:, q0 + 1 :: 2] = torch.gather(keys, 1, order)
    targets[:, q0 + 1 :: 2] = torch.gather(values, 1, order)
    return tokens, targets


def make_batch(task: str, B: int, T: int, min_distance: int, g: torch.Generator):
    if task == "passkey":
        return passkey_batch(B, T, min_distance, g)
    if task == "mqar":
        return mqar_batch(B, T, min_distance, g)
    raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
