"""Training from warmed memories (titans.carry_memory, model/carry.py): each training
forward's memories start where the previous forward's ended, detached, and every N-th
forward (or one of another batch shape) starts afresh; attention always starts afresh;
evaluation neither reads nor moves the carried state."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

from devtools.models import tiny_args, tiny_model
from titans_plugin.blocks.attention import Attention
from titans_plugin.blocks.mac import MACBlock
from titans_plugin.config import TitansConfig
from titans_plugin.memory.neural_memory import NeuralMemory
from titans_plugin.training.checks import Layout, check_context_parallel, check_layout

T = 12  # three memory chunks, two MAC segments


def _tokens(seed: int, batch: int = 2, length: int = T) -> torch.Tensor:
    return torch.randint(0, 50, (batch, length), generator=torch.Generator().manual_seed(seed))


def _loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, tuple | list):
        return [t for x in tree for t in _tensors(x)]
    return []


@pytest.mark.parametrize("length", [T, 10])  # 10: an unfinished chunk carried on
def test_a_memory_only_model_trains_as_one_stream_cut_at_each_forward(length):
    """LMM has no attention and no positions: its carried forward is the stream's, and its
    gradient is truncated backpropagation through time (forward_stream's)."""
    model = tiny_model("M", carry_memory=4).train()
    stream = copy.deepcopy(model)
    first, second = _tokens(0, length=length), _tokens(1, length=length)
    model(first)
    out = model(second)
    with torch.no_grad():
        whole, _ = stream.forward_cached(torch.cat([first, second], dim=1))
    assert (out - whole[:, length:]).abs().max() < 1e-10

    _loss(out, second).backward()
    _, caches = stream.forward_stream(first)
    logits, _ = stream.forward_stream(second, caches)
    _loss(logits, second).backward()
    for (name, p), q in zip(model.named_parameters(), stream.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            assert (p.grad - q.grad).abs().max() < 1e-10, name


@pytest.mark.parametrize("pattern", ["C", "G", "L", "M", "GW"])
def test_each_forward_starts_its_memories_where_the_last_ended_and_its_attention_afresh(pattern, monkeypatch):
    model = tiny_model(pattern, carry_memory=3).train()
    calls: list[tuple[NeuralMemory, object, object]] = []  # (memory, state in, state out)
    attention_caches, segment_positions = [], []
    memory_forward, attention_forward, segment_piece = NeuralMemory.forward, Attention.forward, MACBlock._segment_piece

    def memory_spy(self, x, state=None, starts=None):
        y, end = memory_forward(self, x, state, starts)
        calls.append((self, state, end))
        return y, end

    def attention_spy(self, x, freqs_cis, cache=None, doc_ids=None):
        attention_caches.append(cache)
        return attention_forward(self, x, freqs_cis, cache, doc_ids)

    def segment_spy(self, x, freqs_cis, cache, rope_pos=None, starts=None):
        segment_positions.append(cache.pos)
        return segment_piece(self, x, freqs_cis, cache, rope_pos, starts)

    monkeypatch.setattr(NeuralMemory, "forward", memory_spy)
    monkeypatch.setattr(Attention, "forward", attention_spy)
    monkeypatch.setattr(MACBlock, "_segment_piece", segment_spy)
    per_forward = []
    for seed in range(4):
        calls.clear()
        model(_tokens(seed))
        per_forward.append(list(calls))
    memories = {id(m) for m, _, _ in per_forward[0]}
    for k, forward_calls in enumerate(per_forward):
        firsts = {}
        for memory, state, _ in forward_calls:
            firsts.setdefault(id(memory), state)
        assert set(firsts) == memories
        if k % 3 == 0:  # forwards 0 and 3 start afresh
            assert all(state is None for state in firsts.values()), k
            continue
        lasts = {id(memory): end for memory, _, end in per_forward[k - 1]}
        for key, state in firsts.items():
            carried, ended = _tensors(state), _tensors(lasts[key])
            assert carried
            assert len(carried) == len(ended)
            assert all(torch.equal(a, b) and not a.requires_grad for a, b in zip(carried, ended, strict=True))
    assert all(cache is None for cache in attention_caches)
    if pattern == "C":  # every forward's first segment starts at position 0
        assert segment_positions == [0, 6] * len(model.layers) * 4


def test_another_batch_shape_evaluation_and_no_grad_neither_read_nor_move_the_carry():
    model = tiny_model("G", carry_memory=8).train()
    model(_tokens(0))
    kept = model.memory_carry.states
    model.eval()
    with torch.no_grad():
        evaluated = model(_tokens(1))
    model.train()
    with torch.no_grad():
        model(_tokens(1))
    assert model.memory_carry.states is kept
    assert model.memory_carry.forwards == 1
    fresh = tiny_model("G", carry_memory=8).eval()
    assert torch.equal(evaluated, fresh(_tokens(1)))  # evaluation starts from the initial memory

    model(_tokens(2))
    assert model.memory_carry.forwards == 2
    model(_tokens(3, batch=1))  # a shorter last batch starts a new cycle
    assert model.memory_carry.forwards == 1


@pytest.mark.parametrize("pattern", ["G", "L", "C"])
def test_only_fresh_forwards_train_what_a_stream_starts_from(pattern):
    """The learned initial memory (and MAL's persistent prefix) reach the loss only on a
    forward that starts afresh."""
    model = tiny_model(pattern, carry_memory=2).train()
    starts = [p for block in model.blocks() for p in block.sequence_start_parameters()]
    for k, seed in enumerate(range(3)):
        model.zero_grad()
        tokens = _tokens(seed)
        _loss(model(tokens), tokens).backward()
        touched = [p.grad is not None and bool(p.grad.any()) for p in starts]
        assert all(touched) if k % 2 == 0 else not any(touched), (k, touched)


def test_activation_checkpointing_keeps_the_carried_forward_and_its_gradients():
    plain = tiny_model("CG", carry_memory=3).train()
    wrapped = copy.deepcopy(plain)
    for name, block in list(wrapped.layers.items()):
        wrapped.layers[name] = checkpoint_wrapper(block)
    for seed in range(3):
        tokens = _tokens(seed)
        outs = []
        for model in (plain, wrapped):
            model.zero_grad()
            out = model(tokens)
            _loss(out, tokens).backward()
            outs.append(out)
        assert (outs[0] - outs[1]).abs().max() < 1e-12
        for p, q in zip(plain.parameters(), wrapped.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None)
            if p.grad is not None:
                assert (p.grad - q.grad).abs().max() < 1e-12


def test_a_model_without_memory_has_nothing_to_carry():
    model = tiny_model("AW", carry_memory=4).train()
    assert model.memory_carry.every == 0
    model(_tokens(0))
    assert model.memory_carry.states is None


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match=r"titans.carry_memory must be .*>= 0.*-1"):
        TitansConfig(carry_memory=-1).validate(32, 2)
    block_causal = r"titans.carry_memory must be 0 or 1 with titans.attn_mask_type='block_causal'"
    with pytest.raises(ValueError, match=block_causal):
        TitansConfig(carry_memory=4, attn_mask_type="block_causal").validate(32, 2)
    TitansConfig(carry_memory=1, attn_mask_type="block_causal").validate(32, 2)
    with pytest.raises(ValueError, match=r"titans.carry_memory=4 cannot run with .*context_parallel_degree=2"):
        check_context_parallel(tiny_args("G", carry_memory=4), 2, "headtail", {"training.seq_len": 64}, False)
    check_context_parallel(tiny_args("WA", carry_memory=4), 2, "headtail", {"training.seq_len": 64}, False)
    graphs = r"titans.carry_memory=4 cannot run with CUDA graphs .*--training.disable_cuda_graphs"
    with pytest.raises(ValueError, match=graphs):
        check_layout(tiny_args("G", carry_memory=4), Layout(cuda_graphs=True))
    check_layout(tiny_args("G", carry_memory=4), Layout(cuda_graphs=False))
    check_layout(tiny_args("G", carry_memory=1), Layout(cuda_graphs=True))
    check_layout(tiny_args("WA", carry_memory=4), Layout(cuda_graphs=True))  # nothing to carry
    ragged = r"carry_memory=4 with compile.enable = true .* training.seq_len=10 to be a multiple of titans.chunk_size=4"
    with pytest.raises(ValueError, match=ragged):
        check_layout(tiny_args("G", carry_memory=4), Layout(compile_model=True, seq_lens={"training.seq_len": 10}))
    check_layout(tiny_args("G", carry_memory=4), Layout(compile_model=True, seq_lens={"training.seq_len": 12}))
    check_layout(tiny_args("G", carry_memory=4), Layout(compile_model=False, seq_lens={"training.seq_len": 10}))
    check_layout(tiny_args("G", carry_memory=1), Layout(compile_model=True, seq_lens={"training.seq_len": 10}))


def test_fsdp_casting_a_blocks_inputs_leaves_the_carried_state_in_fp32():
    """FSDP2's mixed precision casts the floating tensors it finds in a block's inputs."""
    from torch.distributed.utils import _apply_to_tensors

    from titans_plugin.blocks import Carry

    model = tiny_model("G", carry_memory=2).float().train()
    model(_tokens(0))
    carry = Carry(model.memory_carry.states[0])
    kwargs = _apply_to_tensors(lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t, {"carry": carry})
    assert kwargs["carry"] is carry
    assert all(t.dtype == torch.float32 for t in _tensors(carry.state) if t.is_floating_point())


def test_a_mac_model_trains_as_one_stream_when_forwards_end_on_segments():
    """A forward of whole segments: MAC's next segment attends to none of this one's keys,
    so carrying its memory and retrieval queries' conv tail is the stream."""
    model = tiny_model("C", carry_memory=4).train()
    stream = copy.deepcopy(model)
    first, second = _tokens(0), _tokens(1)  # 12 tokens: two segments of 6
    model(first)
    out = model(second)
    with torch.no_grad():
        whole, _ = stream.forward_cached(torch.cat([first, second], dim=1))
    assert (out - whole[:, T:]).abs().max() < 1e-4  # RoPE's fp32 tables: positions 12-23 against 0-11


@pytest.mark.parametrize("pattern", ["C", "G", "L", "M"])
def test_the_carried_state_holds_no_more_memory_than_its_own_size(pattern):
    """Its pending inputs, conv tail and MAC's query tail are slices of the whole sequence's
    projections: carried as views, they would keep those alive until the next forward ends."""
    model = tiny_model(pattern, carry_memory=4).train()
    model(_tokens(0, length=10))  # 10: an unfinished chunk, so the pending inputs are not empty
    carried = _tensors(model.memory_carry.states)
    assert any(t.shape[1] == 2 for t in carried if t.dim() > 2)  # the unfinished chunk's 2 tokens
    for t in carried:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), t.shape
