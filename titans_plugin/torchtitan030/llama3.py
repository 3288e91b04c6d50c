"""torchtitan 0.3.0's llama3: its sizes, and its Hugging Face adapter in the Titans names.

0.3.0 describes a llama3 as a `Llama3Model.Config` with one block config per layer; the
sizes a Titans model needs are read from it (the first layer's attention and feed-forward,
the RoPE config, the final norm, weight tying). Its parameter names differ from the Titans
model's in two places (training/llama3_names.py)."""

from titans_plugin.blocks.rope import RopeScaling
from titans_plugin.training.llama3_names import llama3_030_name, titans_name


def llama3_flavors() -> dict:
    """torchtitan's llama3 model configs per flavor (their attention backend is irrelevant: only sizes are read)."""
    from torchtitan.models.llama3 import llama3_configs

    return {name: build(attn_backend="flex") for name, build in llama3_configs.items()}


def llama3_model_args(flavor: str):
    """torchtitan's llama3 model config for a flavor name."""
    from torchtitan.models.llama3 import llama3_configs

    if flavor not in llama3_configs:
        raise ValueError(f"llama3 flavor must be one of {sorted(llama3_configs)}, got {flavor!r}")
    return llama3_configs[flavor](attn_backend="flex")


def titans_fields_from_llama(config) -> dict:
    """TitansModelArgs fields with the sizes of a 0.3.0 llama3 model config."""
    layers = config.layers
    attention, ffn = layers[0].attention, layers[0].feed_forward
    if attention is None or ffn is None:
        raise ValueError("a llama3 config's first layer must have attention and a feed-forward to take sizes from")
    head_dim = attention.head_dim or config.dim // attention.n_heads
    if head_dim * attention.n_heads != config.dim:
        raise ValueError(
            f"attention head_dim={head_dim} x n_heads={attention.n_heads} must equal dim={config.dim} for a Titans "
            "hybrid (its attention projects to the model width)"
        )
    rope = attention.rope
    fields = dict(
        dim=config.dim,
        n_layers=len(layers),
        n_heads=attention.n_heads,
        n_kv_heads=attention.n_kv_heads,
        vocab_size=config.vocab_size,
        ffn_hidden_dim=ffn.w1.out_features,
        norm_eps=config.norm.eps,
        rope_theta=rope.theta,
        tie_embeddings=config.enable_weight_tying,
    )
    if rope.scaling == "llama":
        fields["rope_scaling"] = RopeScaling(
            scaling_factor=rope.scaling_factor,
            low_freq_factor=rope.low_freq_factor,
            high_freq_factor=rope.high_freq_factor,
            original_max_position_embeddings=rope.original_max_position_embeddings,
        )
    elif rope.scaling != "none":
        raise ValueError(f"RoPE scaling {rope.scaling!r} is not supported for Titans hybrids (none or llama)")
    return fields


class HuggingFaceNames:
    """torchtitan 0.3.0's llama3 Hugging Face adapter, in the Titans model's names: its
    name map and q/k permutation (`to_hf`, `from_hf`), as the checkpoint reader uses them."""

    def __init__(self, model_args):
        from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter

        self.adapter = Llama3StateDictAdapter(_llama3_config_for(model_args), None)
        self.from_hf_map = {
            hf: None if ours is None else titans_name(ours.replace("{}", "0")).replace(".0.", ".{}.", 1)
            for hf, ours in self.adapter.from_hf_map.items()
        }

    def to_hf(self, state_dict: dict) -> dict:
        return self.adapter.to_hf({llama3_030_name(k): v for k, v in state_dict.items()})

    def from_hf(self, hf_state_dict: dict) -> dict:
        return {titans_name(k): v for k, v in self.adapter.from_hf(hf_state_dict).items()}


def hf_state_dict_adapter(model_args) -> HuggingFaceNames:
    return HuggingFaceNames(model_args)


def _llama3_config_for(model_args):
    """A 0.3.0 llama3 model config with the Titans model's sizes: what the Hugging Face
    adapter reads (heads, KV heads, dim, weight tying, RoPE)."""
    from torchtitan.models.common import ComplexRoPE, Embedding, Linear, RMSNorm, compute_ffn_hidden_dim
    from torchtitan.models.llama3 import _build_llama3_layers
    from torchtitan.models.llama3.model import Llama3Model

    a = model_args
    scaling = a.rope_scaling
    rope = ComplexRoPE.Config(
        dim=a.dim // a.n_heads,
        max_seq_len=a.max_seq_len,
        theta=a.rope_theta,
        scaling="llama" if scaling else "none",
        **(
            dict(
                scaling_factor=scaling.scaling_factor,
                low_freq_factor=scaling.low_freq_factor,
                high_freq_factor=scaling.high_freq_factor,
                original_max_position_embeddings=scaling.original_max_position_embeddings,
            )
            if scaling
            else {}
        ),
    )
    hidden = a.ffn_hidden_dim or compute_ffn_hidden_dim(
        a.dim, multiple_of=a.multiple_of, ffn_dim_multiplier=a.ffn_dim_multiplier
    )
    layers = _build_llama3_layers(
        n_layers=1,
        dim=a.dim,
        n_heads=a.n_heads,
        n_kv_heads=a.n_kv_heads,
        hidden_dim=hidden,
        rope=rope,
        attn_backend="flex",
    )

    return Llama3Model.Config(
        dim=a.dim,
        vocab_size=a.vocab_size,
        enable_weight_tying=a.tie_embeddings,
        tok_embeddings=Embedding.Config(num_embeddings=a.vocab_size, embedding_dim=a.dim),
        norm=RMSNorm.Config(normalized_shape=a.dim, eps=a.norm_eps),
        lm_head=Linear.Config(in_features=a.dim, out_features=a.vocab_size),
        layers=layers,
    )
