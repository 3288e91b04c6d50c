"""torchtitan's metrics plus per-layer memory statistics (TensorBoard / stdout).

For every memory layer i, at each log step: titans/layer{i}/{theta_mean, eta_mean,
alpha_mean, surprise_rms, weight_rms} from that layer's last training forward."""

from torchtitan.components.metrics import MetricsProcessor

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


class TitansMetricsProcessor(MetricsProcessor):
    def log(self, step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None):
        extra = {**memory_metrics(self.model_parts), **(extra_metrics or {})}
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra)


def build_metrics_processor(job_config, parallel_dims, model_args=None, tag=None):
    return TitansMetricsProcessor(job_config, parallel_dims, tag)
