"""lm-evaluation-harness's `titans` model (lm-eval 0.4.13, the `eval` extra).

    python -m titans_plugin.evaluate --model titans \\
        --model_args config=train_configs/debug_mac.toml,checkpoint=outputs/debug_mac/checkpoint/step-400 \\
        --tasks <task> [--include_path <folder of task YAMLs>] [--device cuda] [--batch_size 8]

model_args: `config` (a torchtitan 0.2.2 TOML, or a 0.3.0 `MODULE:FUNCTION`), `checkpoint`
(a DCP step folder), `dtype` (float32, bfloat16, float16), `max_gen_toks` (default 256).
Importing this module registers the model with lm-eval; in Python, `TitansLM(trained=...)`
evaluates a model already loaded (titans_plugin.inference.trained).

- loglikelihood: the context after the document prefix (BOS), the continuation scored;
  batched longest first, right-padded (the model is causal).
- loglikelihood_rolling: the whole document streamed through the memory in pieces of the
  training length, every token predicted once with everything before it (no truncation,
  no overlapping windows).
- generate_until: the incremental path (memory state and attention caches), stopping at
  lm-eval's `until` strings, the end-of-text token or `max_gen_toks`; requests with the
  same prompt length and settings run as one batch.
"""

import json
import warnings

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from .sampling import Sampling, generate_batch, generator_of
from .scoring import continuation_scores, document_logprob
from .trained import Trained, load_trained

MODEL_ARGS = ("config", "checkpoint", "dtype", "max_gen_toks")


def _batch_size(value) -> int:
    text = str(1 if value is None else value)
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"titans: batch_size must be an integer >= 1 (no 'auto'), got {value!r}")
    return int(text)


def _device(device: str | None) -> str:
    """lm-eval's --device defaults to cuda: on a machine without one, the CPU (with a warning)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"titans: device {device!r} is not available here; evaluating on the CPU", stacklevel=2)
        return "cpu"
    return str(device)


GENERATION_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p", "seed")


def _generation(gen_kwargs: dict, default_max_gen_toks: int) -> tuple[list[str], int, Sampling]:
    """A request's generation settings read as lm-eval's own backends read them
    (normalize_gen_kwargs: the max_new_tokens/max_tokens aliases, do_sample implied by a
    temperature above 0): the stop strings, the token budget and our sampling settings.
    do_sample with no temperature samples at temperature 1, as Hugging Face's generate."""
    kwargs = normalize_gen_kwargs(dict(gen_kwargs), default_max_gen_toks)
    ignored = sorted(set(kwargs) - set(GENERATION_KWARGS))
    if ignored:
        warnings.warn(
            f"titans: generation settings {ignored} are not supported and are ignored; "
            f"supported: {', '.join(GENERATION_KWARGS)} (and lm-eval's max_new_tokens aliases)",
            stacklevel=3,
        )
    temperature = float(kwargs.get("temperature") or 0.0) if kwargs["do_sample"] else 0.0
    if kwargs["do_sample"] and temperature == 0:
        temperature = 1.0
    seed = kwargs.get("seed")
    sampling = Sampling(
        temperature=temperature,
        top_k=int(kwargs.get("top_k") or 0),
        top_p=float(kwargs.get("top_p") or 1.0),
        seed=None if seed is None else int(seed),
    )
    return [s for s in kwargs["until"] if s], int(kwargs["max_gen_toks"]), sampling


@register_model("titans")
class TitansLM(LM):
    def __init__(
        self,
        config: str | None = None,
        checkpoint: str | None = None,
        dtype: str = "float32",
        max_gen_toks: int = 256,
        device: str | None = None,
        batch_size=1,
        max_batch_size=None,
        trained: Trained | None = None,
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise ValueError(f"titans model_args: unknown {sorted(unknown)}; allowed: {', '.join(MODEL_ARGS)}")
        if trained is None:
            if not config or not checkpoint:
                raise ValueError(
                    "titans model_args need config=<TOML or MODULE:FUNCTION> and checkpoint=<DCP step folder>"
                )
            trained = load_trained(str(config), str(checkpoint), device=_device(device), dtype=str(dtype))
        self.trained = trained
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation), split where the whole text's tokens split,
        with the context's trailing spaces moved to the continuation (as lm-eval's
        Hugging Face model does)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.trained.encode(context + continuation)
        n_context = len(self.trained.encode(context)) if context else 0
        return whole[:n_context], whole[n_context:]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._pair(*r.args) for r in requests]
        with tqdm(total=len(pairs), disable=disable_tqdm, desc="titans loglikelihood") as bar:
            scores = continuation_scores(self.trained, pairs, self.batch_size, progress=bar.update)
        for r, score in zip(requests, scores, strict=True):
            self.cache_hook.add_partial("loglikelihood", r.args, score)
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for r in tqdm(requests, disable=disable_tqdm, desc="titans loglikelihood_rolling"):
            (text,) = r.args
            out.append(document_logprob(self.trained, self.trained.encode(text)))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm, desc="titans generate_until") as bar:
            for members in groups.values():
                stop, max_new, sampling = _generation(requests[members[0]].args[1], self.max_gen_toks)
                generator = generator_of(sampling)  # one stream for the group: repeats differ
                prompts = {i: [self.trained.prefix_id, *self.trained.encode(requests[i].args[0])] for i in members}
                members = sorted(members, key=lambda i: len(prompts[i]))  # equal lengths batch together
                for start in range(0, len(members), self.batch_size):
                    rows = members[start : start + self.batch_size]
                    texts = generate_batch(
                        self.trained,
                        [prompts[i] for i in rows],
                        max_new_tokens=max_new,
                        sampling=sampling,
                        stop=stop,
                        generator=generator,
                    )
                    for i, text in zip(rows, texts, strict=True):
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(rows))
        return out
