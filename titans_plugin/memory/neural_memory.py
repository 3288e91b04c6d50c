"""NeuralMemory: the multi-head Titans long-term memory as an nn.Module.

x -> RMSNorm -> q, k, v projections -> short causal conv -> SiLU -> L2-normalised q, k
  -> data-dependent gates theta (inner lr), eta (momentum), alpha (forgetting)
  -> chunked memory scan (kernels/) -> per-head RMSNorm -> sigmoid output gate -> out proj.

Streaming: forward(x, state) continues exactly where the last call stopped, for any
split of the input. Chunks sit at absolute positions, so a call that ends inside a chunk
keeps that chunk's inputs (`pending`) and its start state; the next call re-runs the
chunk from there. The outputs are then identical to one call over the whole sequence.

The stages (`project`, `gates`, `chunk_gates`, `scan`, `output`, `record_stats`) are
public: `forward`, `forward_documents` and context parallel's scan from a zero state
(titans_plugin/context_parallel/memory.py) compose them.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from titans_plugin.kernels import MemoryState, detached_copy, get_activation, memory_mlp, neural_memory_scan
from titans_plugin.utils.dtensor import copy_whole, local

from .config import MemoryConfig
from .conv import causal_depthwise_conv
from .lanes import DocumentLanes


class NeuralMemoryState(NamedTuple):
    """Everything needed to continue a stream. Tensors have batch first."""

    memory: MemoryState  # weights and momentum after the last token seen
    chunk_start: MemoryState  # state where the current, unfinished chunk began
    pending: tuple[torch.Tensor, ...]  # q, k, v, theta, eta, alpha of that chunk so far
    conv_tail: tuple[torch.Tensor, ...] | None  # last K - 1 pre-conv q, k, v inputs
    seen: int  # tokens processed so far (a carried training state counts from 0 each forward: to_carry)

    def detach(self) -> "NeuralMemoryState":
        """Detached copies: the pending inputs and the conv tail are slices of the whole
        sequence's projections, whose storage a plain detach would keep alive for as long
        as the state is held (a carried or streamed state: until the next forward ends)."""
        return NeuralMemoryState(
            self.memory.detached_copy(),
            self.chunk_start.detached_copy(),
            tuple(detached_copy(p) for p in self.pending),
            None if self.conv_tail is None else tuple(detached_copy(t) for t in self.conv_tail),
            self.seen,
        )

    def to_carry(self) -> "NeuralMemoryState":
        """What a carried training forward (titans.carry_memory) hands to the next one:
        detached, its token count at 0. Per-block torch.compile guards on the count, a Python
        int: growing by a batch every forward, it would recompile every block and then be
        traced as a symbol, which torch 2.14.1's dynamo fails on in a checkpointed block."""
        return self.detach()._replace(seen=0)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


_TOKEN_MEANS = ("theta_mean", "eta_mean", "alpha_mean", "clip_active", "clip_factor_mean")


def _rms(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Root of the mean over tensors of each tensor's mean square (detached, fp32)."""
    return torch.stack([t.detach().float().pow(2).mean() for t in tensors]).mean().sqrt()


class NeuralMemory(nn.Module):
    def __init__(self, config: MemoryConfig):
        super().__init__()
        assert config.head_dim or config.dim % config.n_heads == 0, "n_heads must divide dim"
        self.config = config
        H, D = config.n_heads, config.resolved_head_dim
        self.n_heads, self.head_dim = H, D
        inner = H * D
        # The inner loop must not depend on the scale of what a block feeds it (MAC may
        # store raw attention outputs): without this, a deep memory's step size grows
        # with its input and the scan diverges within a few training steps.
        self.input_norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.wq = nn.Linear(config.dim, inner, bias=False)
        self.wk = nn.Linear(config.dim, inner, bias=False)
        self.wv = nn.Linear(config.dim, inner, bias=False)
        # Gate pre-activations, head-major [H, 3] (theta, eta, alpha): a column-wise
        # tensor-parallel shard then holds whole heads.
        self.w_gates = nn.Linear(config.dim, 3 * H, bias=True)
        self.w_out_gate = nn.Linear(config.dim, inner, bias=False)
        self.wo = nn.Linear(inner, config.dim, bias=False)
        K = config.conv_kernel
        self.conv_q = nn.Parameter(torch.empty(inner, K)) if K else None
        self.conv_k = nn.Parameter(torch.empty(inner, K)) if K else None
        self.conv_v = nn.Parameter(torch.empty(inner, K)) if K else None
        # Learned initial memory, one MLP per head: [H, D_in, D_out] per layer.
        self.init_memory = nn.ParameterList(
            nn.Parameter(torch.empty(H, d_in, d_out)) for d_in, d_out in config.layer_dims()
        )
        self.out_norm_weight = nn.Parameter(torch.empty(H, D))
        self.last_stats: dict[str, torch.Tensor] = {}
        self.stats_parts: list | None = None  # collect_stats .. merge_stats
        self.init_weights()

    # -- parameters ---------------------------------------------------------------
    def init_weights(self, init_std: float = 0.02) -> None:
        self.input_norm.reset_parameters()
        for lin in (self.wq, self.wk, self.wv, self.w_out_gate):
            nn.init.trunc_normal_(lin.weight, std=0.02)
        if self.config.out_init == "zero":
            nn.init.zeros_(self.wo.weight)
        else:
            nn.init.trunc_normal_(self.wo.weight, std=init_std)
        nn.init.trunc_normal_(self.w_gates.weight, std=0.02)
        with torch.no_grad():
            # Start with a modest step, strong momentum and little forgetting.
            cfg = self.config
            # head-major [H, 3]: theta ~ lr_init * max_lr, eta ~ 0.9 * max_momentum,
            # alpha ~ forget_init * max_forget
            per_head = torch.tensor([_logit(cfg.lr_init), _logit(0.9), _logit(cfg.forget_init)])
            copy_whole(self.w_gates.bias, per_head.repeat(self.n_heads))
            for conv in (self.conv_q, self.conv_k, self.conv_v):
                if conv is not None:
                    nn.init.uniform_(conv, -1 / math.sqrt(conv.shape[-1]), 1 / math.sqrt(conv.shape[-1]))
            for w in self.init_memory:
                nn.init.normal_(w, std=1 / math.sqrt(w.shape[-2]))
            self.out_norm_weight.fill_(1.0)

    # -- pieces of the forward ------------------------------------------------------
    def _project_one(self, lin, conv, x, tail, starts=None):
        """One of q, k, v: [B, T, H_local, D] after the causal conv and SiLU."""
        B, T, _ = x.shape
        h = lin(x)
        if conv is not None:
            h, tail = causal_depthwise_conv(h, local(conv), tail, starts)
        return F.silu(h).view(B, T, -1, self.head_dim), tail

    def project(self, x: torch.Tensor, conv_tail, starts=None):
        """q, k, v [B, T, H_local, D] with conv, SiLU and L2-normalised q, k."""
        tails = conv_tail if conv_tail is not None else (None, None, None)
        q, tq = self._project_one(self.wq, self.conv_q, x, tails[0], starts)
        k, tk = self._project_one(self.wk, self.conv_k, x, tails[1], starts)
        v, tv = self._project_one(self.wv, self.conv_v, x, tails[2], starts)
        new_tails = (tq, tk, tv) if self.conv_q is not None else None
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, new_tails

    # -- retrieval without update (MAC reads the memory before attending) -------------
    def query(self, x: torch.Tensor, conv_tail: torch.Tensor | None = None, starts: torch.Tensor | None = None):
        """Retrieval queries q [B, T, H, D] for x, and the conv tail of this query stream
        (starts [B, T]: document starts, as in forward)."""
        q, tail = self._project_one(self.wq, self.conv_q, self.input_norm(x), conv_tail, starts)
        return F.normalize(q, dim=-1), tail

    def read(self, q_BTHD: torch.Tensor, weights, x: torch.Tensor) -> torch.Tensor:
        """y = M(q) with fixed memory weights (no update), through the output path."""
        q = q_BTHD.transpose(1, 2).to(weights[0].dtype)
        y = memory_mlp(q, weights, get_activation(self.config.activation).fn)
        return self.output(self.input_norm(x), y.transpose(1, 2))

    def gates(self, x: torch.Tensor):
        """theta in (0, max_lr), eta in (0, max_momentum), alpha in (0, max_forget): [B, T, H]."""
        B, T, _ = x.shape
        z = self.w_gates(x)
        z = z.to(torch.promote_types(z.dtype, torch.float32)).view(B, T, -1, 3)  # fp32 at least, fp64 kept
        c = self.config
        theta = c.max_lr * torch.sigmoid(z[..., 0])
        eta = c.max_momentum * torch.sigmoid(z[..., 1])
        alpha = c.max_forget * torch.sigmoid(z[..., 2])
        return theta, eta, alpha

    def chunk_gates(self, seq: tuple) -> tuple:
        """q, k, v and the gates of a sequence that starts at a chunk boundary, with
        gate_mode = "chunk" giving every token its chunk's first gates."""
        if self.config.gate_mode != "chunk":
            return seq
        first = torch.arange(seq[0].shape[1], device=seq[0].device) // self.config.chunk_size * self.config.chunk_size
        return seq[:3] + tuple(g[:, first] for g in seq[3:])

    def initial_state(self, batch_size: int) -> MemoryState:
        return MemoryState.from_initial(tuple(local(w) for w in self.init_memory), batch_size)

    def scan_flops_per_token(self) -> int:
        return self.config.scan_flops_per_token()

    def read_flops_per_token(self) -> int:
        return self.config.read_flops_per_token()

    def scan(self, inputs, state: MemoryState, resets=None, stats: dict | None = None):
        c = self.config
        return neural_memory_scan(
            *inputs,
            state,
            chunk_size=c.chunk_size,
            activation=c.activation,
            max_grad_norm=c.max_grad_norm,
            backend=c.backend,
            resets=resets,
            initial=None if resets is None else self.initial_state(inputs[0].shape[0]),
            stats=stats,
        )

    def _chunk_resets(self, starts: torch.Tensor, n_pending: int) -> torch.Tensor:
        """Document starts [B, T] of this call -> restarts per chunk of the scanned
        sequence (which begins n_pending tokens earlier, at a chunk boundary)."""
        C = self.config.chunk_size
        starts = F.pad(starts, (n_pending, 0))
        off_grid = starts.clone()
        off_grid[:, ::C] = False
        if off_grid.any():
            raise ValueError(
                f"a document must start at a multiple of the memory's chunk size (titans.chunk_size={C}) "
                "in the sequence the memory scans; blocks lay packed documents out that way "
                "(blocks/documents.py)"
            )
        return starts[:, ::C]

    # -- forward --------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, state: NeuralMemoryState | None = None, starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, NeuralMemoryState]:
        """x [B, T, dim] -> y [B, T, dim] and the state to continue from.

        starts [B, T] (bool): a document begins at these tokens; the memory restarts from
        its initial state there (weights, momentum, conv history). A start must fall on
        the chunk grid of the stream (blocks/documents.py lays documents out that way)."""
        B, T, _ = x.shape
        C = self.config.chunk_size
        x = self.input_norm(x)
        q, k, v, conv_tail = self.project(x, None if state is None else state.conv_tail, starts)
        new = (q, k, v, *self.gates(x))
        if state is None:
            chunk_start, seen = self.initial_state(B), 0
            seq = new
        else:
            chunk_start, seen = state.chunk_start, state.seen
            seq = tuple(torch.cat([p.to(n.dtype), n], dim=1) for p, n in zip(state.pending, new, strict=True))
        n_pending = seq[0].shape[1] - T  # the sequence now starts at a chunk boundary
        seq = self.chunk_gates(seq)

        # Full chunks first, then the unfinished tail from the boundary state: the
        # boundary state is what the next call must start from.
        n_full = seq[0].shape[1] // C * C
        resets = None if starts is None else self._chunk_resets(starts, n_pending)
        outs, boundary = [], chunk_start
        scan_stats: list[dict] = [{}, {}]  # what each of the two scans reports (clip factors)
        if n_full:
            y, boundary = self.scan(
                tuple(s[:, :n_full] for s in seq),
                chunk_start,
                None if resets is None else resets[:, : n_full // C],
                scan_stats[0],
            )
            outs.append(y)
        pending = tuple(s[:, n_full:] for s in seq)
        if resets is not None and resets.shape[1] > n_full // C:
            # a document starting in the unfinished chunk: the next call re-runs that
            # chunk from `boundary`, which must already be the restarted state
            boundary = boundary.reset_rows(resets[:, -1], self.initial_state(B))
        final = boundary
        if pending[0].shape[1]:
            y, final = self.scan(pending, boundary, stats=scan_stats[1])
            outs.append(y)
        y = torch.cat(outs, dim=1)[:, n_pending:] if outs else q.new_zeros(B, 0, q.shape[2], q.shape[3])
        out = self.output(x, y)
        if self.training:
            factors = [st["clip_factor"] for st in scan_stats if "clip_factor" in st]
            self.record_stats(new[3:], final, torch.cat(factors, dim=1)[:, n_pending:] if factors else None)
        return out, NeuralMemoryState(final, boundary, pending, conv_tail, seen + T)

    def forward_documents(self, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """x [B, T, dim] of packed documents -> y [B, T, dim], every document exactly as
        if it were alone: starts [B, T] (bool) marks where a document begins, anywhere.
        The projections and the conv run on the tokens as they are (the conv's taps
        stop at a start); only the scan moves the documents, each onto its own chunk
        grid (memory/lanes.py). No state comes back: a document that runs on past the
        sequence is cut there, as a training window cuts it."""
        B = x.shape[0]
        x = self.input_norm(x)
        q, k, v, _ = self.project(x, None, starts)
        gates = self.gates(x)
        lanes = DocumentLanes.build(starts, self.config.chunk_size)
        theta, eta, alpha = gates
        seq = (lanes.pack(q), lanes.pack(k), lanes.pack(v), lanes.pack(theta), lanes.pack(eta, 1.0), lanes.pack(alpha))
        seq = self.chunk_gates(seq)
        scan_stats: dict = {}
        y, end = self.scan(seq, self.initial_state(lanes.n_lanes), lanes.resets, scan_stats)
        if self.training:
            factor = scan_stats.get("clip_factor")
            self.record_stats(gates, end, None if factor is None else lanes.unpack(factor, B))
        return self.output(x, lanes.unpack(y, B))

    def record_stats(self, gates, final: MemoryState, clip_factor: torch.Tensor | None = None) -> None:
        """Detached summaries of the last training forward, for the metrics logger.
        Tensors, not floats: nothing synchronises until the logger reads them.
        clip_factor [B, T, H]: each token's min(1, max_grad_norm / |inner gradient|)
        from the scan (None without the clip: it never acts)."""
        theta, eta, alpha = (g.detach() for g in gates)
        if clip_factor is None:
            clip_active, clip_factor_mean = theta.new_zeros(()), theta.new_ones(())
        else:
            clip_active, clip_factor_mean = (clip_factor < 1).float().mean(), clip_factor.mean()
        self.last_stats = {
            "theta_mean": theta.mean(),
            "eta_mean": eta.mean(),
            "alpha_mean": alpha.mean(),
            "surprise_rms": _rms(final.momentum),
            "weight_rms": _rms(final.weights),
            "clip_active": clip_active,  # the fraction of tokens whose inner gradient was clipped
            "clip_factor_mean": clip_factor_mean,  # the mean scale the clip applied (1 = never)
        }
        if self.stats_parts is not None:
            self.stats_parts.append((self.last_stats, theta.numel()))

    def collect_stats(self) -> None:
        """From here to merge_stats, keep every call's statistics: for a block that runs the
        memory once per segment (MAC), so that the logged statistics describe its whole
        sequence, not its last segment."""
        self.stats_parts = []

    def merge_stats(self) -> None:
        """last_stats over the calls since collect_stats: token-weighted means, and the
        end-state statistics (surprise_rms, weight_rms) of the last call."""
        parts, self.stats_parts = self.stats_parts, None
        if not parts:
            return
        total = sum(n for _, n in parts)
        merged = {key: sum(stats[key] * (n / total) for stats, n in parts) for key in _TOKEN_MEANS}
        self.last_stats = {**parts[-1][0], **merged}

    def output(self, x: torch.Tensor, y_BTHD: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        dtype = torch.promote_types(y_BTHD.dtype, torch.float32)  # fp32 at least, fp64 kept
        y = y_BTHD.to(dtype)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * local(self.out_norm_weight).to(dtype)
        y = y.to(x.dtype).reshape(B, T, -1) * torch.sigmoid(self.w_out_gate(x))
        return self.wo(y)
