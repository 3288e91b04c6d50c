"""A model from its args, and the weights of a DCP step folder, outside torchrun (both
torchtitan versions: their adapters' build modules add how a config becomes the args)."""

import torch
from torch import nn


def build_model(args, device: str | torch.device | None = None) -> nn.Module:
    """The model for `args`, initialised; on `device` ("meta" builds no storage)."""
    from titans_plugin.model import TitansTransformer

    if device is None:
        return TitansTransformer(args)
    with torch.device(device):
        return TitansTransformer(args)


def load_dcp_checkpoint(model: nn.Module, checkpoint_dir: str) -> nn.Module:
    """Load the model weights of a torchtitan DCP step folder (optimizer, scheduler and
    dataloader entries are left in the folder) into an unsharded model, in place."""
    import torch.distributed.checkpoint as dcp

    state = model.state_dict()
    dcp.load(state, checkpoint_id=checkpoint_dir)
    model.load_state_dict(state)
    return model
