"""A small Hugging Face Llama for upcycling tests: its weights (dim 128, 2 layers, 4 query
and 2 key/value heads, Hugging Face's q/k row order), saved as Hugging Face shards a model,
and its forward written out in Hugging Face's own convention (rotate-half RoPE), so the
name and row-order translation under test is checked independently."""

import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def hf_weights(n_layers=2, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    d, kv, ffn, vocab = 128, 64, 384, 2048

    def mat(rows, cols):
        return (torch.randn(rows, cols, generator=g) * 0.1).bfloat16()

    def norm():
        return (1 + 0.1 * torch.randn(d, generator=g)).bfloat16()

    w = {"model.embed_tokens.weight": mat(vocab, d), "model.norm.weight": norm(), "lm_head.weight": mat(vocab, d)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        w |= {
            p + "self_attn.q_proj.weight": mat(d, d),
            p + "self_attn.k_proj.weight": mat(kv, d),
            p + "self_attn.v_proj.weight": mat(kv, d),
            p + "self_attn.o_proj.weight": mat(d, d),
            p + "mlp.gate_proj.weight": mat(ffn, d),
            p + "mlp.up_proj.weight": mat(ffn, d),
            p + "mlp.down_proj.weight": mat(d, ffn),
            p + "input_layernorm.weight": norm(),
            p + "post_attention_layernorm.weight": norm(),
        }
    w["model.layers.0.self_attn.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, 32, 2) / 32)  # older exports
    return w


def save_hf(weights: dict, folder) -> str:
    """Two safetensors files and their index, as Hugging Face shards a model."""
    os.makedirs(folder)
    names = sorted(weights)
    files = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in files.items():
        save_file({k: weights[k].contiguous() for k in part}, os.path.join(folder, file))
    index = {"weight_map": {k: file for file, part in files.items() for k in part}}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    return str(folder)


def hf_llama_logits(w: dict, tokens, n_heads=4, n_kv=2, theta=10000.0, eps=1e-5):
    """Hugging Face's LlamaForCausalLM forward, written out."""
    w = {k: v.float() for k, v in w.items()}
    b, t = tokens.shape
    hd = 128 // n_heads

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def rotate_half(x):
        return torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], dim=-1)

    freqs = torch.arange(t).float()[:, None] / theta ** (torch.arange(0, hd, 2).float() / hd)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    h = w["model.embed_tokens.weight"][tokens]
    for i in range(sum(1 for k in w if k.endswith("q_proj.weight"))):
        p = f"model.layers.{i}."
        x = rms(h, w[p + "input_layernorm.weight"])
        q = (x @ w[p + "self_attn.q_proj.weight"].T).view(b, t, n_heads, hd).transpose(1, 2)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).view(b, t, n_kv, hd).transpose(1, 2)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).view(b, t, n_kv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(n_heads // n_kv, 1), v.repeat_interleave(n_heads // n_kv, 1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        h = h + a @ w[p + "self_attn.o_proj.weight"].T
        x = rms(h, w[p + "post_attention_layernorm.weight"])
        gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
        h = h + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return rms(h, w["model.norm.weight"]) @ w["lm_head.weight"].T
