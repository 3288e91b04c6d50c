"""Packed documents (titans.attn_mask_type = "block_causal"): a packed batch gives every
document the outputs and parameter gradients it gets alone, for every block type."""

import pytest
import torch

from devtools.models import memory_inputs, tiny_model
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
    for row, lengths in zip(ids, ROW_LENGTHS):
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


@pytest.mark.parametrize("backend", ["chunk", "naive", "triton"])
def test_scan_restarts_match_separate_scans(backend):
    """The dispatch-level restart against the per-token reference scanning each piece
    on its own (triton: fp32 inputs and state)."""
    (q, k, v, th, eta, al), state = memory_inputs(B=2, T=16, momentum=True)
    tol = dict(rtol=1e-10, atol=1e-12)
    if backend == "triton":
        tol = dict(rtol=1e-4, atol=1e-5)
        q, k, v, th, eta, al = (t.float() for t in (q, k, v, th, eta, al))
        state = MemoryState(tuple(w.float() for w in state.weights), tuple(m.float() for m in state.momentum))
    init = MemoryState.from_initial(tuple(w[0] for w in state.weights), 2)
    resets = torch.tensor([[False, True, False, False], [False, False, True, True]])
    y, final = neural_memory_scan(
        q, k, v, th, eta, al, state, chunk_size=4, activation="silu", backend=backend, resets=resets, initial=init
    )
    for b in range(2):
        cut = [0] + [4 * i for i in range(4) if resets[b, i]] + [16]
        s = MemoryState(tuple(w[b : b + 1] for w in state.weights), tuple(m[b : b + 1] for m in state.momentum))
        for i, (lo, hi) in enumerate(zip(cut[:-1], cut[1:])):
            if i:
                s = MemoryState.from_initial(tuple(w[0] for w in state.weights), 1)
            args = (t[b : b + 1, lo:hi] for t in (q, k, v, th, eta, al))
            yb, s = neural_memory_scan(*args, s, chunk_size=4, activation="silu", backend="naive")
            torch.testing.assert_close(y[b : b + 1, lo:hi], yb, **tol)
        for a, c in zip(final.weights + final.momentum, s.weights + s.momentum):
            torch.testing.assert_close(a[b : b + 1], c, **tol)


# chunk: every block type and a hybrid of all; naive (the per-token reference) where it
# can take a second derivative (MAC's memory input goes through attention, whose CPU
# kernel has none). Triton: below, against this.
CASES = [(p, "chunk") for p in ["A", "W", "G", "L", "M", "C", "CGALWM"]]
CASES += [(p, "naive") for p in ["G", "L", "M"]]
# MAC segments shorter than the conv history: the history must not carry a previous
# document into a document's second segment
SHORT_SEGMENTS = dict(segment_len=2, chunk_size=2, conv_kernel=4)


@pytest.mark.parametrize(
    ("pattern", "kernel", "overrides"), [(p, k, {}) for p, k in CASES] + [("C", "chunk", SHORT_SEGMENTS)]
)
def test_packed_batch_equals_each_document_alone(pattern, kernel, overrides):
    model = tiny_model(pattern, n_layers=len(pattern) if len(pattern) > 1 else 2, kernel=kernel, **overrides)
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
    for kernel in ("triton", "chunk"):
        model = tiny_model("GA", kernel=kernel).float()
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
