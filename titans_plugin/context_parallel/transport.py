"""Context parallel's transport: one rank's contiguous shard of the sequence, and what
crosses shards.

With `parallelism.context_parallel_degree = P` the sequence of every row is cut into P
contiguous shards of T / P tokens; rank r holds tokens [r T/P, (r + 1) T/P). A block
then needs from the shards before it exactly what it would have carried in its decoding
cache had it processed them itself:

- a memory layer (and MAC, whose segments interleave attention and memory) continues
  from the state the previous rank ended with: `serial` receives it, runs the block, and
  hands the end state on; in the backward the state's gradient flows back the same way.
  This chain is sequential over ranks, as the scan is over tokens.
- attention needs the keys and values of earlier positions: a sliding window the last
  window - 1 (`previous`, a point-to-point halo when one shard holds them), full
  attention all of them (an all-gather). These do not wait for any scan.

Each exchange is an autograd Function whose backward sends the gradient back along the
path the values came, so the loss on every rank reaches every parameter as in one
process. Outside of autograd (validation, no_grad) the same messages flow without it.
"""

import pickle
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.distributed as dist

from titans_plugin.utils.dtensor import local
from titans_plugin.utils.torch_internals import at_backward_end, current_graph_task_id

# Sends not yet known to be complete, with the buffers they read (kept alive until then).
# Process-wide: the backward's sends outlive the forward's SequenceShard.
_OUTSTANDING: list = []


def flush_sends() -> None:
    """Wait for every send posted so far (their buffers may then be freed)."""
    for work, _ in _OUTSTANDING:
        work.wait()
    _OUTSTANDING.clear()


def wait_sends(works: list) -> None:
    """Wait for these sends (posted by SequenceShard.send) and forget them: a gloo send may be waited
    on once only."""
    for work in works:
        work.wait()
    _OUTSTANDING[:] = [(w, t) for w, t in _OUTSTANDING if all(w is not x for x in works)]


_FLUSH_QUEUED_FOR: list = [None]  # the backward pass whose end will flush


def _flush_when_backward_ends() -> None:
    """A send posted in the backward completes before that backward returns: a rank
    that finished its backward may otherwise leave (or tear down its process group)
    with a gradient still on its way to a rank that waits for it."""
    task = current_graph_task_id()
    if task != -1 and _FLUSH_QUEUED_FOR[0] != task:
        _FLUSH_QUEUED_FOR[0] = task
        at_backward_end(flush_sends)


def _recomputing() -> bool:
    """Activation checkpointing re-runs a block's forward inside the backward. The other
    shards do not re-run theirs then, so the exchanges of the first run are replayed from
    a log instead of repeated."""
    return current_graph_task_id() != -1


@dataclass
class SequenceShard:
    group: dist.ProcessGroup
    rank: int  # position of this shard in the sequence (the rank in `group`)
    size: int  # number of shards
    length: int  # tokens per shard
    # what this block's exchanges returned, in order, for a recompute to replay
    log: deque = field(default_factory=deque)

    @staticmethod
    def of(group: dist.ProcessGroup, local_len: int) -> "SequenceShard":
        return SequenceShard(group, dist.get_rank(group), dist.get_world_size(group), local_len)

    def for_block(self) -> "SequenceShard":
        """The same shard with a log of its own: one per block, which activation
        checkpointing recomputes on its own."""
        return replace(self, log=deque())

    def once(self, exchange, *args):
        """exchange(*args) the first time; its result again when recomputed."""
        if _recomputing():
            return self.log.popleft()
        result = exchange(*args)
        if torch.is_grad_enabled():
            # requires_grad as the first time: whether an op saves a tensor depends on it,
            # and a recompute must save exactly what the first run saved
            self.log.append(map_tree(_detached_like, result))
        return result

    @property
    def offset(self) -> int:
        """Position of this shard's first token in the whole sequence."""
        return self.rank * self.length

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def _peer(self, shard: int) -> int:
        return dist.get_global_rank(self.group, shard)

    # -- point-to-point primitives (the public API the context-parallel layers use) ----
    def send(self, tensor: torch.Tensor, shard: int):
        """Post a send; returns its work. The buffer stays alive until the send completes."""
        tensor = tensor.detach().contiguous()
        work = dist.isend(tensor, self._peer(shard), group=self.group)
        _OUTSTANDING[:] = [(w, t) for w, t in _OUTSTANDING if not w.is_completed()]  # free what has gone
        _OUTSTANDING.append((work, tensor))
        _flush_when_backward_ends()
        return work

    def recv(self, shape, dtype, device, shard: int) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(out, self._peer(shard), group=self.group)
        return out

    def send_tree(self, tree, shard: int, device) -> list[torch.Tensor]:
        """Send a state (NamedTuples, tuples and lists of tensors, ints, None) to `shard`;
        returns its distinct floating-point tensors, the ones whose gradients come back."""
        skeleton, tensors = _without_tensors(tree)
        if _recomputing():  # sent the first time
            return [t for t in tensors if t.is_floating_point()]
        meta = pickle.dumps((skeleton, [(t.shape, t.dtype) for t in tensors]))
        header = torch.tensor([len(meta)], dtype=torch.int64, device=device)
        self.send(header, shard)
        self.send(torch.frombuffer(bytearray(meta), dtype=torch.uint8).to(device), shard)
        for t in tensors:
            self.send(t, shard)
        return [t for t in tensors if t.is_floating_point()]

    def recv_tree(self, shard: int, device):
        """What send_tree sent: (a function that rebuilds the pytree from replacements
        for its distinct floating-point tensors, those tensors)."""
        header = self.recv((1,), torch.int64, device, shard)
        meta = self.recv((int(header.item()),), torch.uint8, device, shard)
        skeleton, shapes = pickle.loads(meta.cpu().numpy().tobytes())
        tensors = [self.recv(shape, dtype, device, shard) for shape, dtype in shapes]
        floats = [i for i, t in enumerate(tensors) if t.is_floating_point()]

        def rebuild(replacements):
            ts = list(tensors)
            for i, r in zip(floats, replacements, strict=True):
                ts[i] = r
            return map_tree(lambda leaf: ts[leaf.index] if isinstance(leaf, _Slot) else leaf, skeleton)

        return rebuild, [tensors[i] for i in floats]

    # -- the state chain (memory scans, MAC) ------------------------------------------
    def serial(self, step, x: torch.Tensor, start_only: Sequence = (), finish=None):
        """out, state = step(x, state) continuing from the previous shard's end state
        (None on the first shard); hands the end state to the next shard. Returns out,
        or finish(out): work that the next shard need not wait for. start_only: the
        parameters step reads only at the start of the sequence (see _reads_all)."""
        state = None
        if not self.is_first:
            rebuild, floats = self.once(self.recv_tree, self.rank - 1, x.device)
            # Both ends decide on grad mode alone, so a sender that waits for a gradient
            # always has a receiver that sends one.
            if torch.is_grad_enabled():
                floats = list(_StateFromPrevious.apply(self, *(t.requires_grad_() for t in floats)))
            state = rebuild(floats)
        out, state = step(x, state)
        if not self.is_last:
            floats = self.send_tree(state, self.rank + 1, x.device)
            if torch.is_grad_enabled():
                out = _StateToNext.apply(self, out, *floats)
        if finish is not None:
            out = finish(out)
        return self._reads_all(out, start_only)

    def _reads_all(self, out: torch.Tensor, start_only) -> torch.Tensor:
        """out, with a zero contribution from the parameters that only the first shard
        reads: every rank then has a gradient (of zeros) for every parameter, which
        FSDP's reduce-scatter needs (it reduces the parameters that have one, and the
        ranks must agree on which)."""
        if self.is_first or not torch.is_grad_enabled():
            return out
        for p in start_only:
            out = out + 0 * local(p).sum().to(out.dtype)  # tensor parallel: this rank's heads
        return out

    # -- attention's earlier keys -------------------------------------------------------
    def previous(self, tensors: tuple[torch.Tensor, ...], n: int | None) -> tuple[torch.Tensor, ...]:
        """For each [B, T_local, ...] tensor, its values at the n positions before this
        shard (all earlier positions when n is None; fewer near the start). Every shard
        must call this with the same n: it is an exchange between all of them."""
        if n is not None and n <= self.length:  # one neighbour holds them: a halo
            if self.size == 1:
                return tuple(t[:, :0] for t in tensors)
            return self.once(_FromPrevious.apply, self, n, *tensors)
        gathered = self.once(AllGatherSequence.apply, self, *tensors)
        start = 0 if n is None else max(0, self.offset - n)
        return tuple(g[:, start : self.offset] for g in gathered)


def _detached_like(t):
    return t.detach().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t


def map_tree(fn, tree):
    """fn applied to every leaf of a state: NamedTuples, tuples, lists and dicts are
    walked, anything else is a leaf."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)._make(map_tree(fn, x) for x in tree)
    if isinstance(tree, tuple | list):
        return type(tree)(map_tree(fn, x) for x in tree)
    if isinstance(tree, dict):
        return {k: map_tree(fn, v) for k, v in tree.items()}
    return fn(tree)


class _Slot:
    """Where a tensor stood in a state sent without its tensors (a leaf, not a tuple)."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return _Slot, (self.index,)


def _without_tensors(tree) -> tuple[object, list[torch.Tensor]]:
    """(the state with every tensor replaced by its _Slot, the distinct tensors): a
    tensor that appears twice (a memory state that is also its chunk-start state) is
    listed once and travels once."""
    tensors: list[torch.Tensor] = []
    index: dict[int, int] = {}

    def slot(leaf):
        if not isinstance(leaf, torch.Tensor):
            return leaf
        if id(leaf) not in index:
            index[id(leaf)] = len(tensors)
            tensors.append(leaf)
        return _Slot(index[id(leaf)])

    return map_tree(slot, tree), tensors


class _StateFromPrevious(torch.autograd.Function):
    """Identity on the received state; backward sends its gradient to the previous shard."""

    @staticmethod
    def forward(ctx, shard, *received):
        ctx.shard = shard
        return tuple(t.view_as(t) for t in received)

    @staticmethod
    def backward(ctx, *grads):  # unused outputs arrive as zeros (materialised grads)
        for g in grads:
            ctx.shard.send(g, ctx.shard.rank - 1)
        return (None, *([None] * len(grads)))


class _StateToNext(torch.autograd.Function):
    """Identity on out; backward receives the sent state's gradient from the next shard
    and adds it to the state's graph."""

    @staticmethod
    def forward(ctx, shard, out, *sent):
        ctx.shard = shard
        ctx.specs = [(t.shape, t.dtype, t.device) for t in sent]
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out):
        shard = ctx.shard
        grads = [shard.recv(shape, dtype, device, shard.rank + 1) for shape, dtype, device in ctx.specs]
        return (None, grad_out, *grads)


class _FromPrevious(torch.autograd.Function):
    """The last n positions of the previous shard (a halo), for each tensor."""

    @staticmethod
    def forward(ctx, shard, n, *tensors):
        ctx.shard, ctx.n = shard, n
        ctx.specs = [(t.shape, t.dtype, t.device) for t in tensors]
        if not shard.is_last:
            for t in tensors:
                shard.send(t[:, t.shape[1] - n :], shard.rank + 1)
        if shard.is_first:
            return tuple(t[:, :0].clone() for t in tensors)
        return tuple(shard.recv((t.shape[0], n, *t.shape[2:]), t.dtype, t.device, shard.rank - 1) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        shard, n = ctx.shard, ctx.n
        if not shard.is_first:
            for g in grads:
                shard.send(g, shard.rank - 1)
        result = []
        for shape, dtype, device in ctx.specs:
            g = torch.zeros(shape, dtype=dtype, device=device)
            if not shard.is_last:
                g[:, shape[1] - n :] = shard.recv((shape[0], n, *shape[2:]), dtype, device, shard.rank + 1)
            result.append(g)
        return (None, None, *result)


class AllGatherSequence(torch.autograd.Function):
    """Every shard's tensor, concatenated along the sequence (dim 1); backward sums each
    shard's gradient over the ranks that read it."""

    @staticmethod
    def forward(ctx, shard, *tensors):
        ctx.shard = shard
        out = []
        for t in tensors:
            parts = [torch.empty_like(t) for _ in range(shard.size)]
            dist.all_gather(parts, t.contiguous(), group=shard.group)
            out.append(torch.cat(parts, dim=1))
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads):
        shard = ctx.shard
        result = []
        for g in grads:
            g = g.contiguous()
            dist.all_reduce(g, group=shard.group)
            result.append(g[:, shard.offset : shard.offset + shard.length])
        return (None, *result)
