"""Packed documents (titans.attn_mask_type = "block_causal"): a packed batch gives every
document the outputs and parameter gradients it gets alone, for every block type."""

import functools

import pytest
import torch

from devtools.models import memory_inputs, tiny_model
from devtools.scan_harness import compare
from titans_plugin.blocks.documents import DocumentLayout, document_ids, document_starts
from titans_plugin.kernels import MemoryState, neural_memory_scan
from titans_plugin.memory import DocumentLanes

EOS = 1
# Ragged rows: 1-token documents, boundaries inside chunks (4), segments (6) and windows
# (5), a document longer than several segments, and rows of different document counts.
ROW_LENGTHS = [[1, 7, 2, 13], [17, 1, 1, 4]]


def packed_batch(seed=0, vocab=50):
    """tokens [2, 23] whose documents (ending in EOS) have ROW_LENGTHS, and the documents."""
    g = torch.Generator().manual_seed(seed)
    rows, docs = [], []
    for lengths in ROW_LENGTHS:
        row = []
        for i, n in enumerate(lengths):
            doc = torch.randint(2, vocab, (n,), generator=g)
            if i < len(lengths) - 1:  # the last document of a row is cut: no EOS
                doc[-1] = EOS
            row.append(doc)
            docs.append(doc)
        rows.append(torch.cat(row))
    return torch.stack(rows), docs


def test_document_ids_follow_eos():
    tokens, _ = packed_batch()
    ids = document_ids(tokens, EOS)
    for row, lengths in zip(ids, ROW_LENGTHS, strict=True):
        expected = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
        assert torch.equal(row, expected)


def test_layout_aligns_every_document_and_round_trips():
    tokens, _ = packed_batch()
    ids = document_ids(tokens, EOS)
    layout = DocumentLayout.build(ids, align=4, lead=2)
    starts = layout.starts.nonzero().tolist()
    assert all(s % 4 == 0 for _, s in starts)
    assert layout.starts.sum() == sum(len(r) for r in ROW_LENGTHS)
    assert layout.n_slots == 36  # 72 slots of documents, longest first over 2 lanes
    x = torch.randn(*tokens.shape, 3, dtype=torch.float64)
    fill = torch.randn(2, 3, dtype=torch.float64)
    packed = layout.pack(x, fill)
    assert torch.equal(layout.unpack(packed), x)
    for b, s in starts:  # lead slots hold the fill, then the document's first token
        assert torch.equal(packed[b, s : s + 2], fill)
        assert layout.positions[b, s + 2] == 0


def test_lanes_give_every_document_its_own_chunk_grid():
    """The scan's layout: each document whole and in order from a chunk start, a restart
    there, zeros on pads, and lanes balanced (longest first)."""
    tokens, docs = packed_batch()
    starts = document_starts(document_ids(tokens, EOS))
    C = 4
    lanes = DocumentLanes.build(starts, chunk_size=C)
    x = torch.arange(1.0, tokens.numel() + 1).view(*tokens.shape, 1)  # nonzero token labels
    packed = lanes.pack(x)
    assert torch.equal(lanes.unpack(packed, tokens.shape[0]), x)
    slots = packed.view(lanes.n_lanes, -1)
    begin = starts.flatten().nonzero().flatten().tolist()
    found = []
    for lane, step in lanes.resets.nonzero().tolist():
        first = int(slots[lane, step * C]) - 1  # the flat token that opens this chunk
        n = len(docs[begin.index(first)])
        assert torch.equal(slots[lane, step * C : step * C + n], torch.arange(first + 1.0, first + n + 1))
        assert not slots[lane, step * C + n : (step + -(-n // C)) * C].any()  # pads
        found.append(first)
    assert sorted(found) == begin  # every document restarts exactly once
    # chunks per document 1, 2, 1, 4 and 5, 1, 1, 1 (16) over 2 lanes (as many as rows):
    # longest first, 8 steps each
    assert lanes.resets.shape == (2, 8)


def _each_piece_alone(q, k, v, theta, eta, alpha, state, *, resets, initial, chunk_size, activation):
    """The reference for restarts: each row cut where it restarts, and each piece scanned
    on its own by the per-token reference (from the initial weights and zero momentum)."""
    ys, ends = [], []
    T = q.shape[1]
    for b in range(q.shape[0]):
        cut = [0] + [chunk_size * i for i in range(resets.shape[1]) if resets[b, i] and i] + [T]
        s = MemoryState(tuple(w[b : b + 1] for w in state.weights), tuple(m[b : b + 1] for m in state.momentum))
        if resets[b, 0]:
            s = s.reset_rows(resets[b, :1], MemoryState(tuple(w[b : b + 1] for w in initial.weights), ()))
        row = []
        for i, (lo, hi) in enumerate(zip(cut[:-1], cut[1:], strict=True)):
            if i:
                s = MemoryState.from_initial(tuple(w[b] for w in initial.weights), 1)
            piece = (t[b : b + 1, lo:hi] for t in (q, k, v, theta, eta, alpha))
            y, s = neural_memory_scan(*piece, s, chunk_size=chunk_size, activation=activation, backend="naive")
            row.append(y)
        ys.append(torch.cat(row, dim=1))
        ends.append(s)
    end = MemoryState(
        *(tuple(torch.cat(t, dim=0) for t in zip(*parts, strict=True)) for parts in zip(*ends, strict=True))
    )
    return torch.cat(ys, dim=0), end


@pytest.mark.parametrize("backend", ["chunk", "naive", "triton"])
def test_scan_restarts_match_separate_scans(backend):
    """The dispatch-level restart against the per-token reference scanning each piece on
    its own (devtools/scan_harness.py: outputs, end state, and the gradients of every input,
    the start state and the initial weights; triton: fp32 inputs and state)."""
    inputs, state = memory_inputs(B=2, T=16, momentum=True)
    g = torch.Generator().manual_seed(5)
    initial = MemoryState(tuple(torch.randn(w.shape, generator=g, dtype=w.dtype) for w in state.weights), ())
    resets = torch.tensor([[True, True, False, False], [False, False, True, True]])
    scan = functools.partial(neural_memory_scan, backend=backend, max_grad_norm=None)
    tol = dict(tol=1e-4, grad_tol=1e-3, dtype=torch.float32) if backend == "triton" else dict(tol=1e-10, grad_tol=1e-9)
    errors = compare(
        scan, _each_piece_alone, inputs, state, **tol, chunk_size=4, activation="silu", resets=resets, initial=initial
    )
    assert "gradient of restart W1" in errors


# chunk: every block type and a hybrid of all; naive (the per-token reference) where it
# can take a second derivative (MAC's memory input goes through attention, whose CPU
# kernel has none). Triton: below, against this.
CASES = [(p, "chunk") for p in ["A", "W", "G", "L", "M", "C", "CGALWM"]]
CASES += [(p, "naive") for p in ["G", "L", "M"]]
# MAC segments shorter than the conv history: the history must not carry a previous
# document into a document's second segment
SHORT_SEGMENTS = dict(segment_len=2, chunk_size=2, conv_kernel=4)


@pytest.mark.parametrize(
    ("pattern", "backend", "overrides"), [(p, k, {}) for p, k in CASES] + [("C", "chunk", SHORT_SEGMENTS)]
)
def test_packed_batch_equals_each_document_alone(pattern, backend, overrides):
    model = tiny_model(pattern, n_layers=len(pattern) if len(pattern) > 1 else 2, backend=backend, **overrides)
    tol = dict(rtol=1e-9, atol=1e-10)
    model.model_args.titans.attn_mask_type = "block_causal"
    tokens, docs = packed_batch()
    ids = document_ids(tokens, EOS)
    logits = model(tokens, attention_masks=ids)
    # ids need only change where a document starts: any other numbering is the same batch
    torch.testing.assert_close(model(tokens, attention_masks=3 * ids + 7), logits, rtol=0, atol=0)
    g = torch.Generator().manual_seed(3)
    weights = torch.randn(logits.shape, generator=g, dtype=logits.dtype)
    (logits * weights).sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    alone, start = [], 0
    flat_weights = weights.reshape(-1, weights.shape[-1])
    for doc in docs:
        out = model(doc.unsqueeze(0))[0]
        (out * flat_weights[start : start + len(doc)]).sum().backward()
        alone.append(out.detach())
        start += len(doc)
    torch.testing.assert_close(logits.detach().reshape(-1, logits.shape[-1]), torch.cat(alone), **tol)
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, **tol, msg=name)


def test_triton_packed_batch_matches_chunk():
    """The Triton kernels (interpreter, fp32) on a packed batch against the chunked path,
    which the test above ties to each document alone: outputs and parameter gradients."""
    tokens, _ = packed_batch()
    docs = document_ids(tokens, EOS)
    results = []
    for backend in ("triton", "chunk"):
        model = tiny_model("GA", backend=backend).float()
        model.model_args.titans.attn_mask_type = "block_causal"
        logits = model(tokens, attention_masks=docs)
        logits.sum().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (out_t, grads_t), (out_c, grads_c) = results
    torch.testing.assert_close(out_t, out_c, rtol=1e-4, atol=1e-5)
    for name, g in grads_c.items():
        torch.testing.assert_close(grads_t[name], g, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("pattern", ["CGLMWA"])
def test_decoding_in_pieces_restarts_at_document_starts(pattern):
    """Pieces that cross document starts (marked with `starts`) give the packed full pass."""
    model = tiny_model(pattern)
    model.model_args.titans.attn_mask_type = "block_causal"
    tokens, _ = packed_batch()
    row = tokens[:1]  # one row: its documents start at 0, 1, 8, 10
    ids = document_ids(row, EOS)
    full = model(row, attention_masks=ids)
    starts = torch.zeros_like(row, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    outs, caches = [], None
    for lo, hi in [(0, 3), (3, 9), (9, 10), (10, 17), (17, 23)]:
        out, caches = model.forward_cached(row[:, lo:hi], caches, starts[:, lo:hi])
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="same positions in every row"):
        model.forward_cached(tokens, None, torch.eye(2, 23, dtype=torch.bool))


def test_bad_document_ids_and_mask_type_fail_clearly():
    from titans_plugin.config import TitansConfig

    model = tiny_model("GA")
    tokens, _ = packed_batch()
    with pytest.raises(ValueError, match="attention_masks must be document ids"):
        model(tokens, attention_masks=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="never decrease"):
        model(tokens, attention_masks=document_ids(tokens, EOS).flip(1) - 3)
    with pytest.raises(ValueError, match=r"titans.attn_mask_type must be one of \['causal', 'block_causal'\]"):
        TitansConfig(attn_mask_type="document").validate(32, 2)
