"""Model arguments: llama3's fields (so llama3 configs carry over) plus the Titans section."""

from dataclasses import dataclass, field

from titans_plugin.blocks.rope import RopeScaling
from titans_plugin.config import TitansConfig


@dataclass
class TitansModelArgs:
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int | None = None
    vocab_size: int = 2048
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # llama3 flavors carry theirs over
    max_seq_len: int = 2048
    depth_init: bool = True
    titans: TitansConfig = field(default_factory=TitansConfig)

    def validate(self, seq_len: int | None = None) -> None:
        """The model sizes and the [titans] section; seq_len: the training sequence length
        (segments and windows must fit in it), max_seq_len when not given."""
        if self.dim < 1 or self.n_heads < 1 or self.dim % self.n_heads:
            raise ValueError(f"model.n_heads={self.n_heads} must divide model.dim={self.dim}")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"model.n_kv_heads={kv} must divide model.n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"attention head dim {self.dim // self.n_heads} must be even for RoPE")
        self.titans.validate(self.dim, self.n_layers, seq_len or self.max_seq_len)

    @property
    def attn_type(self) -> str:
        """What torchtitan's trainer and validator read: for "varlen" they call the
        model's get_attention_masks and pass its result (the document ids) to forward."""
        return "varlen" if self.titans.attn_mask_type == "block_causal" else "sdpa"

    def layer_types(self) -> list[str]:
        return self.titans.layer_types(self.n_layers)
