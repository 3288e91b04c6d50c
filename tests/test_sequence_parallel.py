"""Tensor parallel with sequence parallelism (2 processes, gloo): every block type gives
the single-process logits and parameter gradients (fp64), and between sub-layers each
rank holds only its half of the sequence."""

import torch
from torch.distributed.device_mesh import init_device_mesh

from devtools.models import max_rel_err, tiny_model
from devtools.ranks import run_ranks
from titans_plugin.training.tensor_parallel import apply_tensor_parallel

T = 24
CASES = [
    ("A", {}),
    ("W", {}),
    ("G", {}),
    ("L", {}),
    ("L", {"mal_form": "fused"}),
    ("M", {}),
    ("C", {}),
    ("CGALWM", {}),
    ("GL", {"attn_mask_type": "block_causal"}),  # packed documents: the stream stays replicated
]


def _worker(rank, size):
    mesh = init_device_mesh("cpu", (size,))
    torch.manual_seed(0)
    tokens = torch.randint(2, 50, (2, T))
    tokens[:, [5, 13]] = 1  # EOS: documents for the block_causal case
    weight = torch.randn(2, T, 50, dtype=torch.float64)
    for pattern, titans in CASES:
        reference = tiny_model(pattern, **titans)
        masks = None
        if titans.get("attn_mask_type") == "block_causal":
            masks = reference.get_attention_masks(tokens, type("Tok", (), {"eos_id": 1})())
        logits = reference(tokens, attention_masks=masks)
        (logits * weight).sum().backward()

        model = tiny_model(pattern, **titans)
        apply_tensor_parallel(model, mesh, loss_parallel=False)
        stream: list[int] = []
        for block in model.layers.values():
            block.register_forward_hook(lambda m, args, out, stream=stream: stream.append(args[0].shape[1]))
        out = model(tokens, attention_masks=masks)
        expected = T if masks is not None else T // size
        assert stream == [expected] * len(model.layers), (pattern, stream)
        assert max_rel_err(out, logits.detach()) < 1e-10, pattern
        (out * weight).sum().backward()
        for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            err = max_rel_err(g, q.grad)
            assert err < 1e-10, f"{pattern} {titans}: gradient of {name} off by {err:.2e}"


def test_sequence_parallel_matches_one_process():
    run_ranks(_worker, 2)
