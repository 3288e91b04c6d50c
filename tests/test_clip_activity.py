"""How often the inner-gradient clip acts: every backend reports each token's clip factor
min(1, max_grad_norm / |inner gradient|) (kernels/dispatch.py, `stats`), the comparison
harness checks it against the reference, and the memory turns it into its clip_active and
clip_factor_mean statistics. The Triton kernels' factors are checked by the same harness in
tests/test_triton_kernels.py (every clip case)."""

import pytest
import torch

from devtools.models import memory_inputs
from devtools.scan_harness import compare
from titans_plugin.kernels import chunk_neural_memory, naive_neural_memory
from titans_plugin.memory import MemoryConfig, NeuralMemory


def _norms(inputs, state, chunk_size):
    """Each token's inner-gradient norm, from the reference with a clip so small that it
    acts on every token (the factor max_norm / |g| then exposes |g|); the memory barely
    moves under it, so these are the norms of a nearly frozen memory."""
    stats: dict = {}
    naive_neural_memory(*inputs, state, chunk_size=chunk_size, max_grad_norm=1e-9, stats=stats)
    return 1e-9 / stats["clip_factor"]


@pytest.mark.parametrize("depth", [1, 2])
def test_each_tokens_factor_is_the_references_and_the_clip_acts_on_some_tokens_only(depth):
    inputs, state = memory_inputs(depth=depth, T=13)
    threshold = _norms(inputs, state, 4).median().item()
    errors = compare(
        chunk_neural_memory, naive_neural_memory, inputs, state, tol=1e-12, grad_tol=1e-10, chunk_size=4,
        max_grad_norm=threshold,
    )  # fmt: skip
    assert errors["clip factor"] < 1e-12
    stats: dict = {}
    chunk_neural_memory(*inputs, state, chunk_size=4, max_grad_norm=threshold, stats=stats)
    factor = stats["clip_factor"]
    assert factor.shape == (2, 13, 3)
    assert 0.3 < (factor < 1).double().mean().item() < 0.7  # about half the tokens: the median
    assert factor.max().item() == 1.0


def test_no_clip_no_factor():
    inputs, state = memory_inputs(T=6)
    for scan in (chunk_neural_memory, naive_neural_memory):
        stats: dict = {}
        scan(*inputs, state, chunk_size=2, max_grad_norm=None, stats=stats)
        assert stats == {}


class _WrongFactor:
    """The chunked scan, with its reported clip factors 1% off."""

    def __call__(self, *args, **config):
        out = chunk_neural_memory(*args, **config)
        config["stats"]["clip_factor"].mul_(0.99)
        return out


def test_a_wrong_clip_factor_fails_the_harness():
    inputs, state = memory_inputs(T=9)
    with pytest.raises(AssertionError, match="clip factor"):
        compare(_WrongFactor(), naive_neural_memory, inputs, state, tol=1e-12, grad_tol=1e-10, chunk_size=4,
                max_grad_norm=0.5)  # fmt: skip


def _memory(**kw):
    torch.manual_seed(0)
    cfg = MemoryConfig(**{"dim": 24, "n_heads": 2, "head_dim": 5, "chunk_size": 4, **kw})
    return NeuralMemory(cfg).double().train()


@pytest.mark.parametrize("T", [16, 14])  # 14: an unfinished last chunk runs as a second scan
def test_the_memory_statistics_count_the_clipped_tokens(T):
    x = torch.randn(2, T, 24, dtype=torch.float64)
    expected = {1e-9: (1.0, None), 1e9: (0.0, 1.0), None: (0.0, 1.0)}
    for max_norm, (active, factor_mean) in expected.items():
        m = _memory(max_grad_norm=max_norm)
        m(x)
        assert m.last_stats["clip_active"].item() == active, max_norm
        if factor_mean is not None:
            assert m.last_stats["clip_factor_mean"].item() == factor_mean
    # a threshold in the middle of this memory's inner-gradient norms
    m = _memory(max_grad_norm=1.0)
    with torch.no_grad():
        xn = m.input_norm(x)
        q, k, v, _ = m.project(xn, None, None)
        seq = m.chunk_gates((q, k, v, *m.gates(xn)))
    threshold = _norms(seq, m.initial_state(2), 4).median().item()
    m = _memory(max_grad_norm=threshold)
    m(x)
    active = m.last_stats["clip_active"].item()
    assert 0.0 < active < 1.0
    assert 0.0 < m.last_stats["clip_factor_mean"].item() < 1.0
    # the same fraction from the scan the memory runs, over this call's tokens
    stats: dict = {}
    with torch.no_grad():
        chunk_neural_memory(*seq, m.initial_state(2), chunk_size=4, max_grad_norm=threshold, stats=stats)
    assert active == pytest.approx((stats["clip_factor"] < 1).double().mean().item(), abs=1e-7)


def test_packed_documents_report_only_their_tokens():
    """forward_documents scans documents in lanes with padding; the statistic counts the
    documents' tokens, each once (a clip that acts everywhere gives exactly 1)."""
    m = _memory(max_grad_norm=1e-9)
    x = torch.randn(2, 11, 24, dtype=torch.float64)
    starts = torch.zeros(2, 11, dtype=torch.bool)
    starts[:, 0] = True
    starts[0, 5] = True
    m.forward_documents(x, starts)
    assert m.last_stats["clip_active"].item() == 1.0


def test_mac_reports_its_whole_sequence_not_its_last_segment(monkeypatch):
    """MAC runs the memory once per segment; its logged statistics are token-weighted over
    every segment of the forward (end-state statistics from the last)."""
    from bench.small_models import model_args
    from titans_plugin.model import TitansTransformer

    calls = []
    record = NeuralMemory.record_stats

    def spy(self, gates, final, clip_factor=None):
        calls.append((gates[0].detach(), clip_factor))
        record(self, gates, final, clip_factor)

    monkeypatch.setattr(NeuralMemory, "record_stats", spy)
    torch.manual_seed(0)
    args = model_args("C", vocab=64, window=8, max_len=64, overrides={"max_grad_norm": 1.0})
    model = TitansTransformer(args).train()
    model(torch.randint(0, 64, (2, 40)))
    memory = model.layers["0"].memory
    mine = calls[: len(calls) // 2]  # layer 0's calls come first
    assert len(mine) == 5  # 40 tokens in segments of 8
    stats = memory.last_stats
    assert stats["theta_mean"].item() == pytest.approx(torch.cat([t for t, _ in mine], 1).mean().item(), rel=1e-6)
    clipped = torch.cat([(f < 1).float() for _, f in mine], 1).mean().item()
    assert 0 < clipped < 1
    assert stats["clip_active"].item() == pytest.approx(clipped, abs=1e-6)
    last = mine[-1][0].mean().item()
    assert stats["theta_mean"].item() != pytest.approx(last, rel=1e-3)  # the last segment alone says otherwise
    assert memory.stats_parts is None


def test_the_clip_activity_bench_reads_every_token_of_every_layer():
    """bench/clip_activity.py: a positive norm per token and head from every memory layer,
    the logged fraction in [0, 1], and the model's own clip restored afterwards."""
    from bench.clip_activity import layer_stats
    from bench.small_models import model_args
    from titans_plugin.model import TitansTransformer

    torch.manual_seed(0)
    model = TitansTransformer(model_args("G", vocab=64, window=8, max_len=64, overrides={"max_grad_norm": 1.0}))
    x = torch.randint(0, 64, (2, 32))
    out = layer_stats(model.train(), x)
    assert [name for name, _, _ in out] == ["layers.0.memory", "layers.1.memory"]
    for _, logged, norms in out:
        assert norms.shape == (2 * 32 * 4,)
        assert (norms > 0).all()
        assert 0.0 <= logged["clip_active"] <= 1.0
    assert model.layers["0"].memory.config.max_grad_norm == 1.0  # restored
