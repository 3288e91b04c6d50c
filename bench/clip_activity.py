"""How often the memory's inner-gradient clip acts on a model, and how large the per-token
inner gradients are: one training-mode forward over held-out stories, untrained and from a
checkpoint.

    python -m bench.clip_activity --config train_configs/debug_mac.toml \
        --checkpoint outputs/debug_mac/checkpoint/step-400 --write

For every memory layer: clip_active and clip_factor_mean as training logs them (over every
token of the forward), and the quartiles of the per-token inner-gradient norm |g|, read
from a second forward in which a vanishing clip acts on every token (the factor
max_grad_norm / |g| then gives |g|; the memory barely moves under it, so later tokens see
a nearly frozen memory). A clip of c acts on the tokens whose |g| exceeds c.
"""

import argparse
import dataclasses

import torch

from bench.common import machine, publish, table
from titans_plugin.evals.needles import story_ids
from titans_plugin.evals.niah import tokenizer
from titans_plugin.memory import NeuralMemory

TINY = 1e-12


def layer_stats(model, x: torch.Tensor) -> list[tuple[str, dict, torch.Tensor]]:
    """(layer, logged statistics, per-token |g| over every memory call) for each memory layer."""
    memories = [(name, m) for name, m in model.named_modules() if isinstance(m, NeuralMemory)]
    logged = {}
    with torch.no_grad():
        model(x)
    for name, m in memories:
        logged[name] = {k: float(v) for k, v in m.last_stats.items()}
    factors: dict[str, list] = {name: [] for name, _ in memories}
    saved = {name: m.config for name, m in memories}
    record = NeuralMemory.record_stats

    def spy(self, gates, final, clip_factor=None):
        factors[next(n for n, m in memories if m is self)].append(clip_factor)
        record(self, gates, final, clip_factor)

    NeuralMemory.record_stats = spy  # type: ignore[method-assign]
    try:
        for _, m in memories:
            m.config = dataclasses.replace(m.config, max_grad_norm=TINY)
        with torch.no_grad():
            model(x)
    finally:
        NeuralMemory.record_stats = record  # type: ignore[method-assign]
        for name, m in memories:
            m.config = saved[name]
    return [(name, logged[name], TINY / torch.cat(factors[name], dim=1).flatten()) for name, _ in memories]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="DCP step folder")
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--write", action="store_true", help="write the table into docs/memory.md")
    a = p.parse_args()
    from bench.niah import model_for  # torchtitan 0.2.2's build helpers (layer_stats needs none)

    ids = story_ids(tokenizer(), "validation")
    x = torch.tensor([ids[i * a.seq_len : (i + 1) * a.seq_len] for i in range(a.sequences)])
    rows = []
    for label, ckpt in (("untrained", ""), ("trained", a.checkpoint)):
        torch.manual_seed(0)
        model = model_for(a.config, ckpt, a.seq_len).train()
        clip = next(m for m in model.modules() if isinstance(m, NeuralMemory)).config.max_grad_norm
        for name, logged, g in layer_stats(model, x):
            q = torch.quantile(g.double(), torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)).tolist()
            rows.append(
                [label, name, clip, f"{logged['clip_active']:.3f}", f"{logged['clip_factor_mean']:.3f}"]
                + [f"{v:.3g}" for v in q]
            )
            print(rows[-1], flush=True)
    header = ["weights", "layer", "max_grad_norm", "clip_active", "clip_factor_mean"]
    header += ["inner-grad norm 25%", "median", "75%", "max"]
    doc = (
        f"Config `{a.config}`, checkpoint `{a.checkpoint}`; one training-mode forward of {a.sequences} held-out "
        f"sequences of {a.seq_len} tokens. Machine: {machine()}.\n"
        f"Command: `python -m bench.clip_activity --config {a.config} --checkpoint {a.checkpoint} --write`\n\n"
        f"{table(header, rows)}\n"
    )
    publish(doc, "memory.md", "clip-activity", a.write)


if __name__ == "__main__":
    main()
