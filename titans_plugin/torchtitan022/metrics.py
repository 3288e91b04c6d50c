"""torchtitan 0.2.2's metrics plus the memory's per-layer statistics (training/metrics.py)."""

from torchtitan.components.metrics import MetricsProcessor

from titans_plugin.training.metrics import memory_metrics


class TitansMetricsProcessor(MetricsProcessor):
    def log(self, step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None):
        extra = {**memory_metrics(self.model_parts), **(extra_metrics or {})}
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra)


def build_metrics_processor(job_config, parallel_dims, model_args=None, tag=None):
    return TitansMetricsProcessor(job_config, parallel_dims, tag)
