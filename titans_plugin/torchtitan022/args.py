"""Model args as torchtitan 0.2.2 sees them: our TitansModelArgs plus BaseModelArgs' hooks."""

import copy
from dataclasses import dataclass

from torchtitan.protocols.model import BaseModelArgs

from titans_plugin.config import TitansConfig
from titans_plugin.model import TitansModelArgs, TitansTransformer
from titans_plugin.model.flops import model_nparams_and_flops
from titans_plugin.training.checks import Layout, check_layout


def layout_of(job_config, seq_lens: dict[str, int]) -> Layout:
    p = job_config.parallelism
    compile_config = getattr(job_config, "compile", None)
    compile_model = compile_config is not None and compile_config.enable and "model" in compile_config.components
    return Layout(
        tp=p.tensor_parallel_degree,
        pp=p.pipeline_parallel_degree,
        cp=p.context_parallel_degree,
        cp_load_balancer=p.context_parallel_load_balancer,
        compile_model=compile_model,
        seq_lens=seq_lens,
    )


@dataclass
class TitansTrainArgs(TitansModelArgs, BaseModelArgs):
    def update_from_config(self, job_config, **kwargs) -> None:
        """Take the [titans] section and training.seq_len; validate everything now,
        before any model is built or any step runs."""
        titans = getattr(job_config, "titans", None)
        if titans is not None:
            self.titans = TitansConfig(**copy.deepcopy(vars(titans)))
        # The RoPE table must cover validation sequences too (validation.seq_len defaults
        # to 2048, independent of training.seq_len).
        validation = getattr(job_config, "validation", None)
        val_len = validation.seq_len if validation is not None and validation.enable else 0
        self.max_seq_len = max(job_config.training.seq_len, val_len)
        self.resolve(seq_len=job_config.training.seq_len)
        seq_lens = {"training.seq_len": job_config.training.seq_len}
        if val_len:
            seq_lens["validation.seq_len"] = val_len
        check_layout(self, layout_of(job_config, seq_lens))

    def get_nparams_and_flops(self, model: TitansTransformer, seq_len: int) -> tuple[int, int]:  # type: ignore[override]
        return model_nparams_and_flops(model, seq_len)
