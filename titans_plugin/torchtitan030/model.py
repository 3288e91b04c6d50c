"""A Titans model as torchtitan 0.3.0 sees it: a BaseModel with a nested Config.

The model is TitansTransformer (titans_plugin/model), unchanged; this class adds what 0.3.0's
trainer asks of a model:

- `Config.update_from_config(config=...)` takes the trainer config's `titans` section and
  `training.seq_len`, and validates everything before anything is built;
- `forward(tokens, positions, attention_masks)`: 0.3.0's dataloader hands every batch its
  per-document `positions` (0 where a document starts). With `titans.attn_mask_type =
  "block_causal"` they are the document boundaries every layer respects; otherwise the
  row is one causal sequence, as on 0.2.2. Under context parallel the shard's place in
  the sequence comes from the load balancer's layout, not from these positions;
- `lm_head`, `enable_weight_tying` and `_skip_lm_head` for torchtitan's FSDP and its
  chunked loss.
"""

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torchtitan.protocols import BaseModel

from titans_plugin.blocks.documents import document_ids_from_positions
from titans_plugin.config import TitansConfig
from titans_plugin.model import TitansModelArgs, TitansTransformer
from titans_plugin.model.flops import model_nparams_and_flops
from titans_plugin.training.checks import Layout, check_layout


def layout_of(config) -> Layout:
    p, compile_config = config.parallelism, config.compile
    if p.spmd_backend == "full_dtensor":
        raise ValueError(
            "parallelism.spmd_backend='full_dtensor' is not supported for Titans models: use 'spmd_types' (the "
            "default) or 'partial_dtensor'"
        )
    if p.spmd_backend == "spmd_types" and p.data_parallel_replicate_degree > 1 and p.context_parallel_degree > 1:
        raise ValueError(
            "parallelism.data_parallel_replicate_degree > 1 (HSDP) with context_parallel_degree > 1 needs "
            "parallelism.spmd_backend='partial_dtensor' for Titans models (its FSDP axis folds the data and "
            "context parallel ranks)"
        )
    return Layout(
        tp=p.tensor_parallel_degree,
        pp=p.pipeline_parallel_degree,
        cp=p.context_parallel_degree,
        cp_load_balancer=p.context_parallel_load_balancer,
        compile_model=compile_config.enable and "model" in compile_config.components,
        cuda_graphs=not config.training.disable_cuda_graphs,
        seq_lens={"training.seq_len": config.training.seq_len},
    )


class TitansModel(TitansTransformer, BaseModel):
    @dataclass(kw_only=True, slots=True)
    class Config(BaseModel.Config):
        args: TitansModelArgs = field(default_factory=TitansModelArgs)

        def update_from_config(self, *, config, **kwargs) -> None:
            """The trainer config's `titans` section and sequence length; every check
            runs here, before the model is built."""
            titans = getattr(config, "titans", None)
            if titans is not None:
                self.args.titans = TitansConfig(**copy.deepcopy(vars(titans)))
            self.args.max_seq_len = config.training.seq_len
            self.args.resolve(seq_len=config.training.seq_len)
            check_layout(self.args, layout_of(config))
            if self.args.tie_embeddings and config.parallelism.tensor_parallel_degree > 1:
                raise ValueError(
                    "parallelism.tensor_parallel_degree > 1 is not supported with tied embeddings (llama3 1B/3B "
                    "sizes): the embedding is sharded by rows and the output projection by columns"
                )

        def get_nparams_and_flops(self, model, seq_len: int) -> tuple[int, int]:
            return model_nparams_and_flops(model, seq_len)

    def __init__(self, config: Config):
        TitansTransformer.__init__(self, config.args)
        self.config = config
        self.cp_load_balancer: str | None = None

    @property
    def lm_head(self) -> nn.Linear:
        """torchtitan's name for the output projection (its FSDP and chunked loss read it)."""
        return self.output

    @property
    def enable_weight_tying(self) -> bool:
        return self.model_args.tie_embeddings

    def verify_module_protocol(self) -> None:
        """The blocks are plain nn.Modules built from TitansModelArgs, not torchtitan Module
        configs: nothing under this model is built or initialised through the protocol."""

    def init_states(self, *, buffer_device: torch.device | None = None) -> None:
        self.init_weights(buffer_device=buffer_device)

    def shard_sequence(self, group, load_balancer: str | None = "headtail") -> None:
        """Context parallel: torchtitan 0.3.0 cuts each sequence with `load_balancer`
        before the model (prepare_context_parallel_input)."""
        super().shard_sequence(group)
        self.cp_load_balancer = load_balancer

    def forward(self, tokens: torch.Tensor, attention_masks=None, positions=None) -> torch.Tensor:
        if attention_masks is not None:
            raise ValueError("Titans models build their own masks: attention_masks must be None")
        if self.sequence_group is not None:
            return TitansTransformer.forward(self, tokens, positions=self._shard_positions(tokens))
        docs = None
        if self.model_args.titans.attn_mask_type == "block_causal" and positions is not None:
            docs = document_ids_from_positions(positions)
        return TitansTransformer.forward(self, tokens, attention_masks=docs)

    def _shard_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Where in the whole sequence this rank's tokens lie, from torchtitan's layout:
        with the head-tail balancer rank r holds chunks r and 2P - 1 - r of 2P."""
        import torch.distributed as dist

        assert self.sequence_group is not None
        rank, size = dist.get_rank(self.sequence_group), dist.get_world_size(self.sequence_group)
        T = tokens.shape[1]
        if self.cp_load_balancer == "headtail":
            half = T // 2
            chunks = (rank, 2 * size - 1 - rank)
            pos = torch.cat([torch.arange(c * half, (c + 1) * half) for c in chunks])
        else:
            pos = torch.arange(rank * T, (rank + 1) * T)
        return pos.to(tokens.device).expand(tokens.shape[0], -1)
