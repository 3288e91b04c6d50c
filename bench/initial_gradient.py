"""The gradient a model starts with, per block type and gate scale, at the paper's 170M shape:

    python -m bench.initial_gradient            # ~10 min on 2 cores; --write puts the tables in docs/blocks.md

One forward and backward of an untrained model (the 170M flavor: width 768, 12 layers,
vocabulary 32000; train_configs/paper_170m_mac.toml's [titans] settings, the layer
pattern varied) on 1 x 1,024 tokens of the embedded corpus, fp32, seed 0: the loss and the
global gradient norm (what torchtitan clips to `max_norm`), and the parameter group that
carries most of it. A second table does the same for the debug flavor's models (4 layers),
a third grows an all-MAG stack from 1 to 12 layers at the 170M shape.
"""

import argparse
import os
import time
import tomllib

import torch

from bench.common import REPO, machine, publish, table
from titans_plugin.config import TitansConfig
from titans_plugin.evals.needles import story_ids
from titans_plugin.evals.niah import tokenizer
from titans_plugin.model import TitansModelArgs, TitansTransformer
from titans_plugin.training.flavors import TITANS_SIZES

TOML = os.path.join(REPO, "train_configs", "paper_170m_mac.toml")
DEBUG_TOML = os.path.join(REPO, "train_configs", "debug_mag.toml")
SEQ_LEN = 1024
MODELS = [("Transformer", "A", 1.0), ("LMM", "lmm", 1.0), ("MAL", "mal", 1.0)] + [
    (name, pattern, scale) for name, pattern in (("MAG", "mag"), ("MAC", "mac")) for scale in (1.0, 0.1, 0.02)
]
DEPTHS = (1, 2, 4, 8, 12)


def tokens() -> torch.Tensor:
    ids = story_ids(tokenizer(), "validation", max_stories=64)
    assert len(ids) > SEQ_LEN, "the held-out stories are shorter than one sequence"
    return torch.tensor(ids[: SEQ_LEN + 1]).unsqueeze(0)


def initial_gradient(pattern: str, gate_scale_init: float, n_layers: int | None = None, flavor="170M") -> dict:
    with open(TOML if flavor == "170M" else DEBUG_TOML, "rb") as f:
        titans = {**tomllib.load(f)["titans"], "pattern": pattern, "gate_scale_init": gate_scale_init}
    shape = {**TITANS_SIZES[flavor]}
    shape["n_layers"] = n_layers or shape["n_layers"]
    torch.manual_seed(0)
    model = TitansTransformer(TitansModelArgs(**shape, max_seq_len=SEQ_LEN, titans=TitansConfig(**titans)))
    x = tokens()
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    groups: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            group = ".".join(part for part in name.split(".") if not part.isdigit())
            groups[group] = groups.get(group, 0.0) + p.grad.pow(2).sum().item()
    top = max(groups, key=lambda g: groups[g])
    return {
        "loss": loss.item(),
        "grad_norm": sum(groups.values()) ** 0.5,
        "top": f"{top} ({fmt_norm(groups[top] ** 0.5)})",
        "s": time.perf_counter() - t0,
    }


def fmt_norm(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--write", action="store_true", help="put the tables into docs/blocks.md")
    a = p.parse_args()
    rows, debug_rows = [], []
    measured = {}
    for name, pattern, scale in MODELS:
        r = measured[pattern, scale] = initial_gradient(pattern, scale)
        print(name, scale, r, flush=True)
        scale_cell = f"{scale:g}" if name in ("MAG", "MAC") else "-"
        rows.append([name, scale_cell, f"{r['loss']:.3f}", fmt_norm(r["grad_norm"]), r["top"]])
    for name, pattern in (("Transformer", "A"), ("MAG", "GA"), ("MAC", "CA")):
        r = initial_gradient(pattern, 1.0, flavor="debugmodel")
        print("debugmodel", name, r, flush=True)
        debug_rows.append([name, pattern, f"{r['loss']:.3f}", fmt_norm(r["grad_norm"]), r["top"]])
    depth_rows = []
    for n in DEPTHS:
        cells = [str(n)]
        for scale in (1.0, 0.02):
            r = measured["mag", scale] if n == 12 else initial_gradient("mag", scale, n)
            print("MAG", n, scale, r, flush=True)
            cells.append(fmt_norm(r["grad_norm"]))
        depth_rows.append(cells)
    doc = (
        f"Machine: {machine()}. Command: `python -m bench.initial_gradient --write`. The 170M flavor with "
        f"`train_configs/paper_170m_mac.toml`'s [titans] settings, untrained (seed 0), one forward and backward "
        f"of 1 x {SEQ_LEN:,} tokens of held-out stories in fp32.\n\n"
        + table(["model", "gate_scale_init", "loss", "gradient norm", "largest parameter group (its norm)"], rows)
        + "\n\nThe debug flavor (width 128, 4 layers, `train_configs/debug_mag.toml`'s [titans] settings; "
        + "the language-model tables' models, which train at 512 tokens), gate scale 1, the same 1,024 tokens:\n\n"
        + table(["model", "pattern", "loss", "gradient norm", "largest parameter group (its norm)"], debug_rows)
        + "\n\nAll-MAG stacks of 1 to 12 layers at the 170M shape, otherwise the same:\n\n"
        + table(["layers", "gradient norm, gate scale 1", "gradient norm, gate scale 0.02"], depth_rows)
        + "\n"
    )
    publish(doc, "blocks.md", "initial-gradient", a.write)


if __name__ == "__main__":
    main()
