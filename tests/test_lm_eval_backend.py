"""lm-evaluation-harness's `titans` model (the `eval` extra) on tiny models: each request
type against the full forward pass, for every block type."""

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from devtools.char_tokenizer import BOS_ID, CharTokenizer
from devtools.full_pass import full_greedy, full_logprobs
from devtools.models import tiny_model
from titans_plugin.inference.lm_eval_backend import TitansLM
from titans_plugin.inference.trained import Trained

PATTERNS = ["A", "W", "C", "G", "L", "M", "CGLMWA"]
PIECE = 7  # documents below are read in several pieces
TEXT = "the quick brown fox jumps over the lazy dog, then naps. why? it is tired!"


def backend(pattern: str, with_eos: bool = True, batch_size: int = 2) -> TitansLM:
    trained = Trained(tiny_model(pattern).eval(), CharTokenizer(with_eos), seq_len=PIECE)
    return TitansLM(trained=trained, batch_size=batch_size)


def requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


def test_the_model_is_registered_as_titans():
    assert get_model("titans") is TitansLM


@pytest.mark.parametrize("pattern", PATTERNS)
def test_loglikelihood_rolling_is_the_summed_token_loss(pattern):
    lm = backend(pattern)
    [got] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(TEXT,)]), disable_tqdm=True)
    expected = full_logprobs(lm.trained.model, [BOS_ID, *CharTokenizer().encode(TEXT)]).sum().item()
    assert got == pytest.approx(expected, rel=1e-9)


def test_loglikelihood_scores_the_continuation_with_the_context_spaces_moved_to_it():
    lm = backend("CGLMWA")
    cases = [("the quick brown ", "fox"), ("", "the lazy dog"), ("it is tired", "!"), ("why", "? it is")]
    got = lm.loglikelihood(requests("loglikelihood", cases), disable_tqdm=True)
    tokenizer = CharTokenizer()
    for (context, continuation), (lp, _) in zip(cases, got, strict=True):
        moved = len(context) - len(context.rstrip())
        n = len(continuation) + moved  # one token per character
        seq = [BOS_ID, *tokenizer.encode(context + continuation)]
        assert lp == pytest.approx(full_logprobs(lm.trained.model, seq)[-n:].sum().item(), rel=1e-9)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_generate_until_is_token_identical_to_full_pass_greedy(pattern):
    lm = backend(pattern, with_eos=False)
    prompts = ["the quick brown fox", "why? it is", "the lazy brown dog", "naps", "it is nap"]
    settings = {"until": [], "max_gen_toks": 15, "do_sample": False}
    got = lm.generate_until(requests("generate_until", [(p, settings) for p in prompts]), disable_tqdm=True)
    tokenizer = lm.trained.tokenizer
    for prompt, text in zip(prompts, got, strict=True):
        ids = full_greedy(lm.trained.model, [BOS_ID, *tokenizer.encode(prompt)], 15, eos_id=None)
        assert text == tokenizer.decode(ids)


def test_generate_until_stops_before_the_first_until_string():
    lm = backend("C", with_eos=False)
    prompt = "the quick brown fox"
    ids = full_greedy(lm.trained.model, [BOS_ID, *CharTokenizer().encode(prompt)], 15, eos_id=None)
    full = lm.trained.tokenizer.decode(ids)
    stop = full[5:7]
    assert stop not in full[:5]
    [got] = lm.generate_until(requests("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 15})]))
    assert got == full[: full.index(stop)]


def test_bad_model_args_name_the_allowed_ones():
    with pytest.raises(ValueError, match=r"titans model_args: unknown \['temprature'\]; allowed: config, checkpoint"):
        TitansLM(config="c.toml", checkpoint="x", temprature=1)
    with pytest.raises(ValueError, match="need config=.* and checkpoint="):
        TitansLM(config="c.toml")
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 \(no 'auto'\), got 'auto'"):
        TitansLM(trained=backend("A").trained, batch_size="auto")


def test_a_checkpoint_that_is_not_a_step_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint=.* is not a torchtitan DCP step folder \(no \.metadata\)"):
        TitansLM(config="c.toml", checkpoint=str(tmp_path))


def test_requests_are_scored_the_same_in_any_batch_size():
    cases = [("the quick", " brown"), ("why? it", " is tired"), ("naps", ".")]
    one = backend("CGLMWA", batch_size=1).loglikelihood(requests("loglikelihood", cases), disable_tqdm=True)
    three = backend("CGLMWA", batch_size=3).loglikelihood(requests("loglikelihood", cases), disable_tqdm=True)
    assert [lp for lp, _ in one] == pytest.approx([lp for lp, _ in three], rel=1e-12)
    assert torch.tensor([g for _, g in one]).equal(torch.tensor([g for _, g in three]))


def test_generation_settings_it_cannot_honour_are_named_in_a_warning():
    lm = backend("A", with_eos=False)
    settings = {"until": ["."], "max_gen_toks": 3, "repetition_penalty": 1.2}
    with pytest.warns(UserWarning, match=r"generation settings \['repetition_penalty'\] are not supported"):
        lm.generate_until(requests("generate_until", [("naps", settings)]), disable_tqdm=True)


def test_generation_settings_are_read_as_lm_eval_reads_them():
    """A temperature above 0 samples without do_sample, and max_new_tokens is max_gen_toks."""
    lm = backend("CGLMWA", with_eos=False)
    greedy, sampled, short = lm.generate_until(
        requests(
            "generate_until",
            [
                ("why? it is", {"until": [], "max_gen_toks": 12}),
                ("why? it is", {"until": [], "max_gen_toks": 12, "temperature": 1.0, "seed": 3}),
                ("why? it is", {"until": [], "max_new_tokens": 3}),
            ],
        ),
        disable_tqdm=True,
    )
    assert sampled != greedy
    assert short == greedy[:3]
