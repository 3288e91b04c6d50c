"""torchtitan 0.3.0's metrics plus the memory's per-layer statistics (training/metrics.py)."""

from dataclasses import dataclass

from torchtitan.components.metrics import MetricsProcessor

from titans_plugin.training.metrics import memory_metrics


class TitansMetricsProcessor(MetricsProcessor):
    @dataclass(kw_only=True, slots=True)
    class Config(MetricsProcessor.Config):
        pass

    def log(self, step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None):
        extra = {**memory_metrics(self.model_parts), **(extra_metrics or {})}
        super().log(step, global_avg_loss, global_max_loss, grad_norm, extra)
