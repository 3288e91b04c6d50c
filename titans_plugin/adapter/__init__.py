"""torchtitan 0.2.2 adapter: registers the "titans" train spec.

Everything torchtitan-specific lives here; the model code (memory, blocks, kernels)
does not import torchtitan, so an adapter for later torchtitan releases is glue."""

from torchtitan.components.loss import build_cross_entropy_loss
from torchtitan.components.lr_scheduler import build_lr_schedulers
from torchtitan.components.optimizer import build_optimizers
from torchtitan.components.validate import build_validator
from torchtitan.protocols.train_spec import TrainSpec, register_train_spec

from titans_plugin.model import TitansTransformer

from .cpu import enable_cpu_support
from .data import build_dataloader, build_tokenizer, register_datasets
from .flavors import TITANS_FLAVORS
from .metrics import build_metrics_processor
from .parallelize import parallelize_titans

MODEL_NAME = "titans"


def train_spec() -> TrainSpec:
    return TrainSpec(
        model_cls=TitansTransformer,
        model_args=TITANS_FLAVORS,
        parallelize_fn=parallelize_titans,
        pipelining_fn=None,
        build_optimizers_fn=build_optimizers,
        build_lr_schedulers_fn=build_lr_schedulers,
        build_dataloader_fn=build_dataloader,
        build_tokenizer_fn=build_tokenizer,
        build_loss_fn=build_cross_entropy_loss,
        build_validator_fn=build_validator,
        build_metrics_processor_fn=build_metrics_processor,
    )


_registered = False


def register() -> None:
    """Register the model and datasets with torchtitan and, on a machine without an
    accelerator, make torchtitan use the CPU. Idempotent (torchtitan's own registry
    refuses a second registration)."""
    global _registered
    if _registered:
        return
    enable_cpu_support()
    register_datasets()
    register_train_spec(MODEL_NAME, train_spec())
    _registered = True
