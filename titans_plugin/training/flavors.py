"""Model sizes ("flavors"). The layer pattern and memory settings come from [titans].

debugmodel    CPU-sized: trains in minutes on 2 cores, with the shipped 2048-token tokenizer.
170M .. 760M  the paper's sizes (section 5.1), Llama-2 vocabulary (32000). The paper gives
              parameter counts, not shapes; these shapes are ours, chosen so an all-MAC model
              lands near the nominal count (docs/configuration.md lists the exact counts).
Each adapter adds `llama3_<name>` for every llama3 size of its torchtitan, unchanged.
"""

PAPER_VOCAB = 32000

TITANS_SIZES: dict[str, dict] = {
    "debugmodel": dict(dim=128, n_layers=4, n_heads=4, vocab_size=2048, multiple_of=64),
    "170M": dict(dim=768, n_layers=12, n_heads=12, vocab_size=PAPER_VOCAB),
    "340M": dict(dim=1024, n_layers=15, n_heads=16, vocab_size=PAPER_VOCAB),
    "400M": dict(dim=1024, n_layers=18, n_heads=16, vocab_size=PAPER_VOCAB),
    "760M": dict(dim=1536, n_layers=16, n_heads=16, vocab_size=PAPER_VOCAB),
}
