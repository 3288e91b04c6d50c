"""Model sizes ("flavors"). The layer pattern and memory settings come from [titans].

debugmodel    CPU-sized: trains in minutes on 2 cores, with the shipped 2048-token tokenizer.
170M .. 760M  the paper's sizes (section 5.1), Llama-2 vocabulary (32000). The paper gives
              parameter counts, not shapes; these shapes are ours, chosen so an all-MAC model
              lands near the nominal count (docs/configuration.md lists the exact counts).
llama3_*      every torchtitan llama3 sdpa flavor with identical sizes (what the converter emits).
"""

from titans_plugin.hybrid import LLAMA_FIELDS, titans_args_from_llama

from .args import TitansTrainArgs

PAPER_VOCAB = 32000


def _flavors() -> dict[str, TitansTrainArgs]:
    flavors = {
        "debugmodel": TitansTrainArgs(dim=128, n_layers=4, n_heads=4, vocab_size=2048, multiple_of=64),
        "170M": TitansTrainArgs(dim=768, n_layers=12, n_heads=12, vocab_size=PAPER_VOCAB),
        "340M": TitansTrainArgs(dim=1024, n_layers=15, n_heads=16, vocab_size=PAPER_VOCAB),
        "400M": TitansTrainArgs(dim=1024, n_layers=18, n_heads=16, vocab_size=PAPER_VOCAB),
        "760M": TitansTrainArgs(dim=1536, n_layers=16, n_heads=16, vocab_size=PAPER_VOCAB),
    }
    from torchtitan.models.llama3 import llama3_args

    for name in llama3_args:
        if getattr(llama3_args[name], "attn_type", "sdpa") != "sdpa":
            continue  # flex/varlen variants differ only in attention kernels we do not use
        base = titans_args_from_llama(llama3_args[name])
        fields = {f: getattr(base, f) for f in LLAMA_FIELDS}
        flavors[f"llama3_{name}"] = TitansTrainArgs(**fields, rope_scaling=base.rope_scaling)
    return flavors


TITANS_FLAVORS = _flavors()
