"""Model arguments: llama3's fields (so llama3 configs carry over) plus the Titans section."""

import copy
from dataclasses import dataclass, field

from titans_plugin.blocks.rope import RopeScaling
from titans_plugin.config import TitansConfig

# The fields TitansModelArgs shares with torchtitan's llama3 model args (same names, same
# meaning): a llama3 size carries over field for field.
LLAMA_FIELDS = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "multiple_of",
    "ffn_dim_multiplier",
    "norm_eps",
    "rope_theta",
    "max_seq_len",
    "depth_init",
)


@dataclass
class TitansModelArgs:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int | None = None
    vocab_size: int = 2048
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_hidden_dim: int = 0  # 0: from multiple_of and ffn_dim_multiplier (llama3's rule)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # llama3 flavors carry theirs over
    max_seq_len: int = 2048
    depth_init: bool = True
    tie_embeddings: bool = False  # the embedding and the output projection share one matrix (llama3 1B/3B)
    titans: TitansConfig = field(default_factory=TitansConfig)

    def resolve(self, seq_len: int | None = None) -> list[str]:
        """Validate the model sizes and the [titans] section, once, and return each layer's
        block letter (also kept for the model builder, `layer_types`). seq_len: the
        training sequence length (segments and windows must fit in it), max_seq_len when
        not given."""
        self._check_sizes()
        letters = self.titans.validate(self.dim, self.n_layers, seq_len or self.max_seq_len)
        self._resolved = (self._resolution_key(), letters)
        return letters

    def _resolution_key(self):
        return (copy.deepcopy(self.titans), self.dim, self.n_layers, self.n_heads, self.n_kv_heads)

    def layer_types(self) -> list[str]:
        """Each layer's block letter: the one `resolve` found, unless the args changed
        since (then resolved, and validated, again)."""
        resolved = getattr(self, "_resolved", None)
        if resolved is None or resolved[0] != self._resolution_key():
            return self.resolve()
        return list(resolved[1])

    def _check_sizes(self) -> None:
        if self.dim < 1 or self.n_heads < 1 or self.dim % self.n_heads:
            raise ValueError(f"model.n_heads={self.n_heads} must divide model.dim={self.dim}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"model.n_kv_heads={kv} must divide model.n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"attention head dim {self.dim // self.n_heads} must be even for RoPE")

    @property
    def attn_type(self) -> str:
        """What torchtitan's trainer and validator read: for "varlen" they call the
        model's get_attention_masks and pass its result (the document ids) to forward."""
        return "varlen" if self.titans.attn_mask_type == "block_causal" else "sdpa"
