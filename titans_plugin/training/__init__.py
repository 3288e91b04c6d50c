"""What both torchtitan adapters share, without importing torchtitan: the layout checks,
the room per-block compile needs, the flavor sizes, the datasets and tokenizer, the memory
metrics, the tensor-parallel plan, activation checkpointing's save list and the CPU device
module."""
