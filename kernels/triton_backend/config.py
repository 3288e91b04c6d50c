"""The Triton scan's launch configuration: what each kernel is compiled with for a memory
configuration on a GPU architecture. Pure functions and constants (a leaf module): the
launches, the capability checks, the ahead-of-time compile and the compile report all read
it, so a kernel's compile-time arguments are written in one place."""

import os

import torch


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter: TRITON_INTERPRET read as Triton reads it
    (1, true, on or yes, in any case). Read here, not through triton.knobs, because dispatch
    asks while torch.compile traces, and dynamo cannot trace Triton's C++ reader."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


ACTIVATION_CODES = {"silu": 0, "gelu": 1, "tanh": 2, "relu": 3}
# Matmul operand type per input dtype (pieces.OP_*): bf16/fp16 on the tensor cores
# in their own type with fp32 accumulation, fp32 as IEEE fp32.
OPERAND_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
SUPPORTED_DEPTHS = (1, 2)
INPUT_DTYPES = tuple(OPERAND_CODES)
# Saved for the backward: one checkpoint state every k chunks, with k the smallest that
# keeps the checkpoints within this many bytes per token and head (the chunks between are
# recomputed from the checkpoint in the backward).
SAVED_BYTES_PER_TOKEN = 1024
HIDDEN_TILE = 16  # hidden units per state tile (forward.py); 16 spills least (docs/kernels.md)
# The depth-2 forward runs as four phases (layer 1, layer 2, update, output; forward.forward_chunk)
# where its one walk spills (compile report, docs/kernels.md): on GPUs older than sm_90 (no
# warpgroup MMA: every matmul operand sits in registers), and on sm_90 for head dims or
# chunks above 64. Elsewhere the one walk does not spill and moves less through L2. Tests
# set PHASED_FORWARD to run either form in the interpreter.
PHASED_FORWARD_BELOW_ARCH = 90
PHASED_FORWARD_ABOVE_TILE = 64
PHASED_FORWARD: bool | None = None


def pad(n: int) -> int:
    """Tile extent for n: a power of two >= 16 (tl.dot's minimum on GPUs)."""
    return max(16, 1 << (n - 1).bit_length())


def state_size(DK: int, hidden: int, DV: int) -> int:
    """Floats per (batch, head) in the flat state (W1, W2, S1, S2; pack_state's layout)."""
    return 2 * (DK * hidden + hidden * DV) if hidden else 2 * DK * DV


def checkpoint_interval(nstate: int, chunk_size: int) -> int:
    """Chunks per saved checkpoint: the smallest k with nstate * 4 / (k * chunk) <= budget."""
    return max(1, -(-nstate * 4 // (SAVED_BYTES_PER_TOKEN * chunk_size)))


def phased_forward(depth: int, arch: int | None, chunk_tile: int, head_tile: int) -> bool:
    """Whether the forward kernel runs a depth-2 chunk as four phases on sm_<arch> (tiles:
    the padded chunk and the larger padded head dim)."""
    if depth != 2:
        return False
    if PHASED_FORWARD is not None:
        return PHASED_FORWARD
    if arch is None:  # the interpreter: the one walk unless a test asks
        return False
    return arch < PHASED_FORWARD_BELOW_ARCH or max(chunk_tile, head_tile) > PHASED_FORWARD_ABOVE_TILE


def forward_scratch(meta: dict) -> int:
    """fp32 scratch per program of the phased forward (forward.forward_scratch: d1, the
    partial output, the layer-2 scores, theta_eff, layer 1's output); one unused float
    otherwise."""
    BC, BV = meta["BC"], meta["BV"]
    return 2 * BC * BV + BC * BC + BC + BC * meta["DT"] if meta["PHASED"] else 1


def backward_scratch(meta: dict) -> int:
    """fp32 scratch per program of the backward kernel: the tile scratch [3, BC, DT], then
    the chunk scratch that its phases hand on (backward_scratch.chunk_scratch: d1, dd1,
    da0, dq, the two [BC, BC] score gradients, 16 per-token vectors and the key path's
    partial sum)."""
    BC, BK, BV = meta["BC"], meta["BK"], meta["BV"]
    return 3 * BC * meta["DT"] + 2 * BC * BV + 2 * BC * BK + 2 * BC * BC + 16 * BC + BC * max(BK, BV)


def forward_args(meta: dict) -> dict:
    """The forward kernel's compile-time arguments: kernel_meta's and its scratch size."""
    return {**meta, "FSCRATCH": forward_scratch(meta)}


def backward_args(meta: dict) -> dict:
    """The backward kernel's compile-time arguments: kernel_meta's without the forward's
    PHASED (the backward's replay is one walk either way) and its scratch size."""
    args = {name: value for name, value in meta.items() if name != "PHASED"}
    return {**args, "SCRATCH": backward_scratch(args)}


def kernel_meta(
    DK: int,
    hidden: int,
    DV: int,
    chunk_size: int,
    activation: str,
    clip: bool,
    dtype: torch.dtype,
    checkpoint_every: int,
    arch: int | None = None,
    resets: bool = False,
) -> dict:
    """Compile-time parameters of both kernels for one configuration on sm_<arch> (None:
    the interpreter); also what kernels/compile_report.py compiles. resets: the variant
    that restarts rows (packed documents)."""
    DT = hidden if hidden else DV  # the tiled width: hidden units, or W's columns at depth 1
    BT = min(HIDDEN_TILE, pad(DT))  # read at call time: tests shrink it to get several tiles
    BC = pad(chunk_size)
    return {
        "DK": DK,
        "DT": DT,
        "DV": DV,
        "BK": pad(DK),
        "BT": BT,
        "BV": pad(DV),
        "NT": -(-DT // BT),
        "CHUNK": chunk_size,
        "BC": BC,
        "DEPTH": 2 if hidden else 1,
        "NSTATE": state_size(DK, hidden, DV),
        "CKPT": checkpoint_every,
        "ACT": ACTIVATION_CODES[activation],
        "CLIP": clip,
        "OP": OPERAND_CODES[dtype],
        "RESETS": resets,
        "PHASED": phased_forward(2 if hidden else 1, arch, BC, max(pad(DK), pad(DV))),  # the forward's only
        "num_warps": 8 if max(BC, pad(DK), pad(DV)) >= 64 else 4,
        # Without it ptxas caps an 8-warp sm_80 kernel at 128 registers and spills 2.5x more;
        # on sm_90 the same cap makes ptxas spill more, so it is left to ptxas there.
        "maxnreg": 255 if arch is not None and arch < 90 else None,
    }


def arch_of(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor
