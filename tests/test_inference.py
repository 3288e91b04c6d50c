"""Scoring and sampling a model through its incremental path, checked against the full
forward pass: every block type, documents longer than the piece size and than the
model's position table."""

import pytest
import torch

from devtools.char_tokenizer import BOS_ID, EOS_ID, CharTokenizer
from devtools.full_pass import full_greedy, full_logprobs
from devtools.models import tiny_model
from titans_plugin.inference.sampling import Sampling, StopText, generate, generate_batch, pick
from titans_plugin.inference.scoring import continuation_scores, document_logprob
from titans_plugin.inference.trained import Trained, dtype_of

PATTERNS = ["A", "W", "C", "G", "L", "M", "CGLMWA"]
PIECE = 7  # the "training length": documents below are read in several pieces


def trained_tiny(pattern: str, with_eos: bool = True) -> Trained:
    return Trained(tiny_model(pattern).eval(), CharTokenizer(with_eos), seq_len=PIECE)


def random_ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 48, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_rolling_logprob_is_the_summed_token_loss_of_the_full_pass(pattern):
    """80 tokens: 12 pieces of 7, past the tiny model's 64-position table."""
    trained = trained_tiny(pattern)
    ids = random_ids(80, seed=1)
    expected = full_logprobs(trained.model, [BOS_ID, *ids]).sum().item()
    got = document_logprob(trained, ids)
    assert abs(got - expected) <= 1e-9 * abs(expected), (got, expected)


def test_growing_the_position_table_keeps_every_existing_position():
    model = tiny_model("A")
    before = model.freqs_cis.clone()
    model.cover_positions(200)
    assert model.freqs_cis.shape[0] >= 200
    assert torch.equal(model.freqs_cis[: before.shape[0]], before)


@pytest.mark.parametrize("pattern", ["C", "CGLMWA"])
def test_continuation_scores_batched_equal_the_full_pass(pattern):
    trained = trained_tiny(pattern)
    pairs = [(random_ids(n_ctx, seed=n_ctx), random_ids(n_cont, seed=100 + n_ctx)) for n_ctx, n_cont in
             [(0, 3), (5, 1), (19, 4), (3, 9), (11, 2)]]  # fmt: skip
    batched = continuation_scores(trained, pairs, batch_size=3)
    single = continuation_scores(trained, pairs, batch_size=1)
    for (context, continuation), (lp, greedy), (lp1, greedy1) in zip(pairs, batched, single, strict=True):
        seq = [BOS_ID, *context, *continuation]
        logprobs = full_logprobs(trained.model, seq)[-len(continuation) :]
        with torch.no_grad():
            argmax = trained.model(torch.tensor([seq[:-1]]))[0, -len(continuation) :].argmax(-1)
        assert lp == pytest.approx(logprobs.sum().item(), rel=1e-9)
        assert greedy == bool((argmax == torch.tensor(continuation)).all())
        assert (lp1, greedy1) == (pytest.approx(lp, rel=1e-12), greedy)


def test_a_greedy_continuation_is_recognised_as_greedy():
    trained = trained_tiny("CGLMWA")
    context = random_ids(9, seed=3)
    continuation = full_greedy(trained.model, [BOS_ID, *context], 4, EOS_ID)
    assert len(continuation) == 4
    [(_, greedy)] = continuation_scores(trained, [(context, continuation)], batch_size=1)
    assert greedy


@pytest.mark.parametrize("pattern", PATTERNS)
def test_greedy_generation_is_token_identical_to_the_full_pass(pattern):
    """A 17-token prompt (three pieces) then 20 tokens one at a time (no end-of-text
    token: all 20 are compared, whatever the untrained model prefers)."""
    trained = trained_tiny(pattern, with_eos=False)
    prompt = [BOS_ID, *random_ids(16, seed=2)]
    expected = trained.tokenizer.decode(full_greedy(trained.model, prompt, 20, eos_id=None))
    text = "".join(generate(trained, prompt, max_new_tokens=20, sampling=Sampling()))
    assert text == expected


def test_generate_batch_equals_one_prompt_at_a_time():
    trained = trained_tiny("CGLMWA", with_eos=False)
    prompts = [[BOS_ID, *random_ids(n, seed=100 * i + n)] for i, n in enumerate((4, 9, 4, 12, 9))]
    assert prompts[0] != prompts[2]  # different rows of one batch
    assert prompts[1] != prompts[4]
    batch = generate_batch(trained, prompts, max_new_tokens=6, sampling=Sampling(), stop=["cc"])
    one = ["".join(generate(trained, p, max_new_tokens=6, sampling=Sampling(), stop=["cc"])) for p in prompts]
    assert batch == one


class _Spelling:
    """A model stand-in for StopText: nothing but a tokenizer."""

    tokenizer = CharTokenizer()


def test_stop_text_holds_back_what_may_start_a_stop_string_and_ends_before_it():
    stop = StopText(_Spelling(), stop=["end."])  # type: ignore[arg-type]
    released = [stop.add(CharTokenizer().encode(c)[0]) for c in "it is en the end. more"]
    assert "".join(released) == "it is en the "
    assert "".join(released[: len("it is en the en")]) == "it is en the"[: len("it is en the en") - 3]
    assert stop.done
    assert stop.add(0) == ""


class _ByteFallback:
    """A tokenizer stand-in of one token per UTF-8 byte whose decoder, like a byte-fallback
    one, shows every byte of an unfinished character as U+FFFD."""

    eos_id = None

    def decode(self, ids) -> str:
        data = bytes(ids)
        for cut in range(len(data), -1, -1):
            try:
                return data[:cut].decode() + "\ufffd" * (len(data) - cut)
            except UnicodeDecodeError:
                continue
        raise AssertionError("unreachable")


def test_stop_text_holds_an_unfinished_character_until_its_bytes_are_all_there():
    class Model:
        tokenizer = _ByteFallback()

    stop = StopText(Model(), stop=["C."])  # type: ignore[arg-type]
    pieces = [stop.add(b) for b in "A\N{GRINNING FACE}BC. x".encode()]
    assert "".join(pieces) == "A\N{GRINNING FACE}B"
    assert not any("\ufffd" in p for p in pieces)


def test_the_tokens_a_tokenizer_adds_by_itself_are_not_counted_twice():
    class AddsBos(CharTokenizer):
        hf_adds_bos = True

        def encode(self, text, add_bos=False, add_eos=False):
            return [BOS_ID, *super().encode(text, add_eos=add_eos)]

    plain, adds = trained_tiny("CGLMWA"), trained_tiny("CGLMWA")
    adds.tokenizer = AddsBos()
    assert adds.encode("why? it is") == plain.encode("why? it is")
    ids = plain.encode("the lazy dog")
    assert document_logprob(adds, adds.encode("the lazy dog")) == document_logprob(plain, ids)


def test_stop_text_ends_at_the_end_of_text_token():
    stop = StopText(_Spelling(), stop=["zz"])  # type: ignore[arg-type]
    out = "".join(stop.add(t) for t in CharTokenizer().encode("abz")) + stop.add(EOS_ID)
    assert out == "abz"
    assert stop.done


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -0.5, "temperature must be >= 0"),
        ("top_k", -1, "top_k must be an integer >= 0"),
        ("top_k", 2.5, "top_k must be an integer >= 0"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
        ("top_p", 1.5, r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**{field: value})


def test_sampling_keeps_to_top_k_and_top_p_and_repeats_with_its_seed():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 2.8]]).repeat(400, 1)
    top2 = pick(logits, Sampling(temperature=1.0, top_k=2), torch.Generator().manual_seed(0))
    assert set(top2.tolist()) == {1, 2}
    nucleus = pick(logits, Sampling(temperature=1.0, top_p=0.5), torch.Generator().manual_seed(0))
    assert set(nucleus.tolist()) == {1, 2}  # p(1) = 0.36 < 0.5, p(1) + p(2) = 0.69
    assert set(pick(logits, Sampling(temperature=1.0, top_p=0.1), None).tolist()) == {1}
    assert set(pick(logits, Sampling(temperature=1.0), torch.Generator().manual_seed(0)).tolist()) == {0, 1, 2, 3, 4}
    trained = trained_tiny("CGLMWA", with_eos=False)
    prompt = [BOS_ID, *random_ids(5, seed=4)]
    runs = ["".join(generate(trained, prompt, max_new_tokens=12, sampling=Sampling(1.0, seed=s))) for s in (7, 7, 8)]
    assert runs[0] == runs[1] != runs[2]
    repeats = generate_batch(trained, [prompt, prompt], max_new_tokens=12, sampling=Sampling(1.0, seed=7))
    assert repeats[0] != repeats[1]  # one random stream per call: repeats of a prompt differ
    assert generate_batch(trained, [prompt, prompt], max_new_tokens=12, sampling=Sampling(1.0, seed=7)) == repeats


def test_top_k_keeps_exactly_k_tokens_when_scores_tie():
    logits = torch.tensor([[2.0, 2.0, 2.0, 0.0]]).repeat(300, 1)
    picked = pick(logits, Sampling(temperature=1.0, top_k=1), torch.Generator().manual_seed(0))
    assert len(set(picked.tolist())) == 1


def test_a_bad_dtype_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16', 'float16'\], got 'fp8'"):
        dtype_of("fp8")
