"""torchtitan 0.2.2 adapter, and its entry module: importing it registers the "titans" train
spec, the plugin's datasets and, on a machine without an accelerator, the CPU support.

    [experimental]
    custom_import = "titans_plugin.torchtitan022"
    [job]
    custom_config_module = "titans_plugin.torchtitan022.job_config"   # adds [titans]

Everything here speaks torchtitan 0.2.2; what both torchtitan versions share (checks,
flavor sizes, datasets, metrics, the tensor-parallel plan, the CPU device module) lives in
titans_plugin/training/."""

from torchtitan.components.loss import build_cross_entropy_loss
from torchtitan.components.lr_scheduler import build_lr_schedulers
from torchtitan.components.optimizer import build_optimizers
from torchtitan.components.validate import build_validator
from torchtitan.protocols.train_spec import TrainSpec, register_train_spec

from titans_plugin.model import TitansTransformer
from titans_plugin.training.cpu import enable_cpu_support

from .data import build_dataloader, build_tokenizer, register_datasets
from .flavors import TITANS_FLAVORS
from .metrics import build_metrics_processor
from .parallelize import parallelize_titans

MODEL_NAME = "titans"
# the modules of torchtitan 0.2.2 that bind device_type / device_module by name
DEVICE_MODULES = (
    "torchtitan.tools.utils",
    "torchtitan.components.metrics",
    "torchtitan.distributed.parallel_dims",
    "torchtitan.distributed.utils",
    "torchtitan.tools.profiling",
)


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


def _register() -> None:
    enable_cpu_support(DEVICE_MODULES)
    register_datasets()
    register_train_spec(MODEL_NAME, train_spec())


_register()  # once: a module runs once per process
