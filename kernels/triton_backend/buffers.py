"""The Triton forward kernels' output and scratch buffers and compile-time arguments, shared
by the one-program (ops.py) and the split (split.py) launches."""

import torch
from torch import Tensor

from .config import arch_of, kernel_meta


def empty(shape, dtype, device) -> Tensor:
    """Every output and scratch buffer comes from here (tests poison it with NaN to prove
    the kernels write every element they return and read no scratch they did not write)."""
    return torch.empty(shape, dtype=dtype, device=device)


def launch_meta(q, v, hidden, chunk_size, activation, max_grad_norm, checkpoint_every, resets):
    return kernel_meta(
        q.shape[3],
        hidden,
        v.shape[3],
        chunk_size,
        activation,
        max_grad_norm > 0,
        q.dtype,
        checkpoint_every,
        arch_of(q.device),
        resets.numel() > 0,
    )


def saved_shape(B, H, T, chunk_size, checkpoint_every, nstate, save):
    n_chunks = -(-T // chunk_size)
    n_ckpt = -(-n_chunks // checkpoint_every)
    return (B, H, n_ckpt, nstate) if save else (0,)


def forward_outputs(q, v, theta, state, chunk_size, max_grad_norm, save_states, checkpoint_every):
    """A forward kernel's outputs, allocated: y, the state to advance in place (a copy),
    the checkpoints, theta in the buffer whose second half receives each token's clip
    factor (forward.clip_factors; theta itself without the clip), and the clip factors."""
    B, T, H = q.shape[:3]
    y = empty((B, T, H, v.shape[3]), q.dtype, q.device)
    state_out = state.clone()
    saved = empty(
        saved_shape(B, H, T, chunk_size, checkpoint_every, state.shape[-1], save_states), torch.float32, q.device
    )
    if max_grad_norm > 0:
        gates = empty((2, B, T, H), torch.float32, q.device)
        gates[0].copy_(theta)
        return y, state_out, saved, gates[0], gates[1]
    return y, state_out, saved, theta, empty((0,), torch.float32, q.device)


def backward_outputs(q, k, v, theta, dstate, init, checkpoint_every, programs, scratch):
    """A backward kernel's outputs and working memory, allocated: dq, dk, dv, the three
    gates' gradients, the state gradient to carry back in place (a copy of dstate), the
    restart weights' gradient (zeros: the kernel adds to it), the replay buffer ([B*H,
    checkpoint_every, N]) and `scratch` fp32 per program for `programs` programs."""
    B, T, H = q.shape[:3]
    dq = empty(q.shape, q.dtype, q.device)
    dk = empty(k.shape, k.dtype, k.device)
    dv = empty(v.shape, v.dtype, v.device)
    dgates = [empty(theta.shape, torch.float32, q.device) for _ in range(3)]
    dinit = torch.zeros(init.shape, dtype=torch.float32, device=q.device)
    replay = empty((B * H, checkpoint_every, dstate.shape[-1]), torch.float32, q.device)
    work = empty((programs, scratch), torch.float32, q.device)
    return (dq, dk, dv, *dgates, dstate.clone(), dinit), replay, work
