"""Transformers into Titans hybrids: new hybrids with llama3 sizes and layers swapped in
place (hybrid.py), torchtitan 0.2.2 TOML configs (convert.py), and trained checkpoints,
torchtitan DCP or Hugging Face (upcycle.py, checkpoints.py). Works on whichever torchtitan
is installed (stack.py)."""
