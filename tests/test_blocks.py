"""Blocks and hybrid models: causality, incremental decoding, spec, swap, FLOPs."""

import pytest
import torch

from devtools.models import tiny_model
from titans_plugin.config import apply_overrides, parse_layer_spec
from titans_plugin.model.flops import model_nparams_and_flops

PATTERNS = ["A", "W", "C", "G", "L", "M", "CGLMWA"]
# every block form: the defaults above, plus MAC storing the attention output and fused MAL
FORMS = [(p, {}) for p in PATTERNS] + [("C", {"mac_memory_input": "attention"}), ("L", {"mal_form": "fused"})]
FORM_IDS = [p + "".join(f"-{v}" for v in kw.values()) for p, kw in FORMS]


@pytest.mark.parametrize(("pattern", "form"), FORMS, ids=FORM_IDS)
def test_model_is_causal(pattern, form):
    m = tiny_model(pattern, **form)
    tokens = torch.randint(0, 50, (2, 23))
    logits = m(tokens)
    for t in (0, 5, 6, 11, 17):
        changed = tokens.clone()
        changed[:, t + 1 :] = torch.randint(0, 50, changed[:, t + 1 :].shape)
        assert torch.equal(m(changed)[:, : t + 1], logits[:, : t + 1]), t


@pytest.mark.parametrize(("pattern", "form"), FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("pieces", [[1] * 23, [1, 1, 3, 5, 2, 7, 1, 3], [6, 6, 11]])
def test_incremental_decoding_equals_full_pass(pattern, form, pieces):
    """Piece lengths cross MAC segment (6), memory chunk (4) and window (5) boundaries."""
    m = tiny_model(pattern, **form)
    tokens = torch.randint(0, 50, (2, 23))
    full = m(tokens)
    outs, caches, pos = [], None, 0
    for n in pieces:
        logits, caches = m.forward_cached(tokens[:, pos : pos + n], caches)
        outs.append(logits)
        pos += n
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-11


@pytest.mark.parametrize(("pattern", "form"), FORMS, ids=FORM_IDS)
def test_stream_training_equals_full_pass_and_cuts_the_graph_between_pieces(pattern, form):
    """forward_stream: the pieces' logits are the full pass's; the caches it hands on carry no
    graph, so a piece's gradient is the truncated one (the earlier pieces' tokens are read,
    not trained through), which differs from the gradient through the whole sequence."""
    m = tiny_model(pattern, **form)
    tokens = torch.randint(0, 50, (2, 23))
    target = torch.randint(0, 50, (2, 11))
    first, caches = m.forward_stream(tokens[:, :12])
    handed_on = [t for t in torch.utils._pytree.tree_leaves(caches) if isinstance(t, torch.Tensor)]
    assert all(not t.requires_grad for t in handed_on)
    # each in storage of its own: a slice of the piece's projections would keep them alive
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in handed_on)
    last, _ = m.forward_stream(tokens[:, 12:], caches)
    assert (torch.cat([first, last], 1) - m(tokens)).abs().max() < 1e-11

    def grads(logits) -> dict[str, torch.Tensor]:
        m.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    truncated = grads(last)
    _, read = m.forward_cached(tokens[:, :12])  # the same caches, read without a graph
    again = grads(m.forward_stream(tokens[:, 12:], read)[0])
    assert again.keys() == truncated.keys()
    assert all(torch.equal(again[n], g) for n, g in truncated.items())
    whole = grads(m(tokens)[:, 12:])
    # what only the stream's start uses (the memory's initial weights, MAL's persistent
    # prefix) learns nothing from a later piece
    assert not any(".init_memory." in n or n.endswith("persistent.tokens") for n in truncated)
    assert any(".init_memory." in n for n in whole) == any(letter in pattern for letter in "CGLM")
    assert max((whole[n] - g).abs().max().item() for n, g in truncated.items()) > 1e-6


@pytest.mark.parametrize("pattern", ["C", "G", "L", "M"])
def test_memory_blocks_train(pattern):
    """The loss falls, and the trained memory carries part of it: silencing every memory's
    output afterwards (its output projection zeroed) costs loss. A memory that output
    nothing would train just as well and lose nothing when silenced."""
    torch.manual_seed(0)
    m = tiny_model(pattern).float()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    data = torch.randint(0, 50, (4, 17))

    def loss_of(model):
        logits = model(data[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())

    losses = []
    for _ in range(30):
        loss = loss_of(m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    with torch.no_grad():
        trained = loss_of(m).item()
        for layer in m.layers.values():
            layer.memory.wo.weight.zero_()
        silenced = loss_of(m).item()
    assert silenced > trained + 0.1, (trained, silenced)


def test_mac_attention_does_not_cross_segments():
    """What lies in an earlier segment reaches a token only through the memory. With the
    memory frozen (learning rate and forgetting ~0: forgetting is data-dependent, so it
    carries information too) and no conv, a later segment cannot see an earlier one."""
    tokens = torch.randint(0, 50, (1, 12))
    changed = tokens.clone()
    changed[:, :6] = torch.randint(0, 50, (1, 6))  # the whole first segment
    frozen = tiny_model("C", n_layers=1, max_lr=1e-12, max_forget=1e-12, conv_kernel=0)
    assert (frozen(changed)[:, 6:] - frozen(tokens)[:, 6:]).abs().max() < 1e-9
    live = tiny_model("C", n_layers=1)  # and with a live memory it does reach across
    assert (live(changed)[:, 6:] - live(tokens)[:, 6:]).abs().max() > 1e-6


def test_mac_memory_input_changes_only_what_is_stored():
    """Same weights: "attention" writes y, "residual" writes x + y. Written by hand for
    one segment, the residual form equals the attention form fed x + y."""
    residual = tiny_model("C", n_layers=1, seed=3)
    attention = tiny_model("C", n_layers=1, seed=3, mac_memory_input="attention")
    attention.load_state_dict(residual.state_dict())
    tokens = torch.randint(0, 50, (2, 6))  # one segment
    assert not torch.allclose(residual(tokens), attention(tokens))
    block, h = residual.layers["0"], residual.tok_embeddings(tokens)
    x = block.attention_norm(h)
    freqs = residual.freqs_cis
    q, k, v = block.attention.project(x, freqs, 0)
    hm = block.memory.read(block.memory.query(x, None)[0], block.memory.initial_state(2).weights, x)
    kh, vh = block.attention.project_kv(hm, freqs, 0)
    pos = torch.arange(6)
    from titans_plugin.blocks.attention import masked_attention

    pk, pv = block.attention.persistent_kv()
    y = block.attention.wo(
        masked_attention(
            q, torch.cat([kh, k], 1), torch.cat([vh, v], 1), pos, torch.cat([pos, pos]), None, pk, pv
        ).reshape(2, 6, -1)
    )
    m, _ = block.memory(x + y, None)
    mixed = block.gate(y, m)
    out = h + mixed
    out = out + block.feed_forward(block.ffn_norm(out))
    want = residual.output(residual.norm(out))
    assert (residual(tokens) - want).abs().max() < 1e-12


def test_mal_forms_share_weights_and_stacked_adds_one_norm():
    stacked, fused = tiny_model("L", n_layers=1, seed=4), tiny_model("L", n_layers=1, seed=4, mal_form="fused")
    extra = set(stacked.state_dict()) - set(fused.state_dict())
    assert extra == {"layers.0.memory_norm.weight"}
    assert not set(fused.state_dict()) - set(stacked.state_dict())
    block, x = stacked.layers["0"], torch.randn(2, 9, 32, dtype=torch.float64)
    freqs = stacked.freqs_cis
    h = x + block.memory(torch.cat([block.persistent(2, x.dtype), block.memory_norm(x)], 1), None)[0][:, 2:]
    h = h + block.attention(block.attention_norm(h), freqs, None)[0]
    want = h + block.feed_forward(block.ffn_norm(h))
    assert (block(x, freqs) - want).abs().max() < 1e-12


def _memory_gradient(pattern: str, seed: int, **form) -> float:
    """Norm of the loss gradient reaching the first memory's q/k/v projections at init."""
    m = tiny_model(pattern, n_layers=2, seed=seed, **form)
    tokens = torch.randint(0, 50, (4, 23), generator=torch.Generator().manual_seed(10 + seed))
    loss = torch.nn.functional.cross_entropy(m(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    memory = m.layers["0"].memory
    return torch.cat([lin.weight.grad.flatten() for lin in (memory.wq, memory.wk, memory.wv)]).norm().item()


@pytest.mark.parametrize("seed", [0, 1])
def test_stacked_mal_memory_gets_a_gradient_like_mag(seed):
    """Why MAL is stacked by default: fused, the memory's gradient at initialisation is
    ~1000x smaller than MAG's (it reaches the stream only through the window's values)."""
    mag = _memory_gradient("G", seed)
    stacked = _memory_gradient("L", seed)
    fused = _memory_gradient("L", seed, mal_form="fused")
    assert mag / stacked < 20, (mag, stacked, fused)
    assert mag / fused > 200, (mag, stacked, fused)


def test_spec_parsing_and_errors():
    assert parse_layer_spec("GGA", 8) == list("GGAGGAGG")
    assert parse_layer_spec("mac", 3) == ["C", "C", "C"]
    assert parse_layer_spec(["c", "A"], 2) == ["C", "A"]
    assert apply_overrides(["A"] * 4, {0: "C", 3: "m"}) == ["C", "A", "A", "M"]
    with pytest.raises(ValueError, match=r"unknown layer type 'X'.*allowed: A \(full causal"):
        parse_layer_spec("GAX", 4)
    with pytest.raises(ValueError, match="lists 3 layer types but the model has n_layers=4"):
        parse_layer_spec(["A", "C", "G"], 4)
    with pytest.raises(ValueError, match=r"layer index 7 out of range 0\.\.3"):
        apply_overrides(["A"] * 4, {7: "C"})
    with pytest.raises(ValueError, match="must not be empty"):
        parse_layer_spec("", 4)


def test_flops_and_params_per_block_type():
    m = tiny_model("CGLMWA")
    n, flops = model_nparams_and_flops(m, seq_len=64)
    assert n == sum(p.numel() for p in m.parameters())
    per = {b.block_type: b.flops_per_token(64) for b in m.layers.values()}
    assert flops == sum(per.values()) + 6 * (m.output.weight.numel() + m.norm.weight.numel())
    # Counted by hand. dim 32, 4 heads of 8, 2 KV heads, FFN hidden 96 (llama3's rule,
    # multiple_of 16); every block has 2 norms (64) and the FFN (3 * 32 * 96 = 9216).
    shared = 64 + 9216
    attention = 32 * 32 + 2 * 32 * 16 + 32 * 32  # wq, wk, wv, wo
    assert per["A"] == 6 * (shared + attention) + 12 * 4 * 8 * 64  # context: the sequence
    assert per["W"] == 6 * (shared + attention) + 12 * 4 * 8 * 5  # context: the window
    # Memory: 2 heads of 8, MLP 8 -> 32 -> 8, chunk 4. Weights applied to tokens: input
    # norm 32, q/k/v/out-gate 4 * 32 * 16, gates 32 * 6 + 6, wo 16 * 32, convs 3 * 16 * 4,
    # output norm 2 * 8; the initial memory (2 * 8 * 32 * 2) is counted by the scan.
    memory = 32 + 2048 + 198 + 512 + 192 + 16
    # Scan forward per head and token: 2C^2 = 32 for A @ E, then per layer with mm = 2 * 8 * 32:
    # keys mm, delta through W^T (second layer only) mm, query 2mm, scores 2C(D_in + D_out),
    # end-of-chunk updates 2mm.
    mm = 2 * 8 * 32
    scan = 2 * (32 + (mm + 2 * mm + 2 * 4 * 40 + 2 * mm) + (mm + mm + 2 * mm + 2 * 4 * 40 + 2 * mm))
    assert per["M"] == 6 * (shared + memory) + 3 * scan
    persistent_kv = 2  # MAG attends to 2 persistent tokens besides its window
    gate = 2 * 32
    assert per["G"] == 6 * (shared + attention + 2 * 32 + memory + gate) + 3 * scan + 12 * 4 * 8 * (5 + persistent_kv)
    # MAL: persistent tokens prefix the memory's input, attention sees only the window;
    # the stacked form has its own norm (32) before the memory.
    assert per["L"] == 6 * (shared + memory + 2 * 32 + 32 + attention) + 3 * scan + 12 * 4 * 8 * 5
    # MAC: full attention over its segment's 6 tokens and their 6 retrieved memories plus
    # 2 persistent tokens, and a read of every query through the memory (2 * 2 * 8 * 32 * 2).
    read = 2 * (2 * 8 * 32) * 2
    assert per["C"] == 6 * (shared + attention + 2 * 32 + memory + gate) + 3 * scan + 3 * read + 12 * 4 * 8 * 14
