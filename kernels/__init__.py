"""The Titans memory scan: one op, several backends (kernels/dispatch.py has the contract).

naive            per-token reference (the definition)
chunk_autograd   the chunked closed form through plain autograd (reference for chunk)
chunk            exact chunk-parallel PyTorch path with a hand-written backward (runs everywhere)
triton_backend/  the Triton kernels as torch custom ops (CUDA, or TRITON_INTERPRET=1)
gluon_backend/   the forward as a Gluon kernel on a cluster of sm_90 CTAs (the state in their
                 shared memory), differentiated by the Triton backward
dispatch         picks the backend (`neural_memory_scan`); self_check: the kernel backends
                 checked on the device before their first use; design_race: which checked
                 kernel design `auto` runs, timed at first use
state_response   how a linear memory's scan depends on its start state (context parallel)
compile_report   `python -m titans_plugin.kernels.compile_report`: registers, spills, shared
                 memory and tensor-core instructions per kernel for sm_90 and sm_80, no GPU needed
"""

from .activations import ACTIVATIONS, get_activation
from .chunk import chunk_neural_memory
from .chunk_autograd import chunk_neural_memory_autograd
from .dispatch import BACKENDS, neural_memory_scan, resolve_backend
from .naive import memory_mlp, naive_neural_memory
from .state import MemoryState, detached_copy
from .state_response import add_start_state, response_output, state_response
from .triton_backend import SUPPORTED_DEPTHS as TRITON_DEPTHS
from .triton_backend import triton_neural_memory

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "MemoryState",
    "add_start_state",
    "chunk_neural_memory",
    "chunk_neural_memory_autograd",
    "detached_copy",
    "get_activation",
    "memory_mlp",
    "naive_neural_memory",
    "neural_memory_scan",
    "resolve_backend",
    "response_output",
    "state_response",
    "TRITON_DEPTHS",
    "triton_neural_memory",
]
