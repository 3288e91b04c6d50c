import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter. It must be switched on before
# the kernels are defined (kernels/triton_backend/ops.py imports them on first launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
