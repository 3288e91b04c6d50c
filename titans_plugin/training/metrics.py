"""Per-layer memory statistics for the training logs (TensorBoard / stdout).

For every memory layer i, at each log step: titans/layer{i}/{theta_mean, eta_mean,
alpha_mean, surprise_rms, weight_rms, clip_active, clip_factor_mean} from that layer's last training forward. Each
adapter's metrics processor adds these to torchtitan's own."""

from titans_plugin.memory import NeuralMemory


def memory_metrics(model_parts) -> dict[str, float]:
    out = {}
    for part in model_parts or []:
        for name, module in part.named_modules():
            if isinstance(module, NeuralMemory) and module.last_stats:
                layer = name.replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")
                layer = layer.split(".")[1] if layer.startswith("layers.") else layer
                for key, value in module.last_stats.items():
                    out[f"titans/layer{layer}/{key}"] = float(value)
    return out
