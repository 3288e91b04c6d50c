"""Packed documents laid out for the scan: every document on its own chunk grid, in lanes.

A memory scanning a document alone starts from its initial state and cuts the document
into chunks from its first token; the last chunk is short unless the length is a
multiple of the chunk size. In a packed batch the documents are independent sequences,
so the scan need not follow the rows: `DocumentLanes` gives every document whole chunks
in one of `n_lanes` lanes, its chunks in order, with a restart before its first chunk and
its short last chunk padded. A pad comes after every real token of its chunk and has
theta = 0, so it changes nothing a real token sees and gets no gradient. Its inputs are
zero except the momentum gate, which is 1, so a lane's end state keeps the momentum its
last document ended with (the memory's statistics read it). There are as many lanes as
rows (the scan's tensors keep the batch's shapes; more lanes, each step wider, measured
slower on CPU), and documents go to lanes longest first, each to the least filled lane,
so the lanes end nearly together. This is the layout flash-linear-attention's
`cu_seqlens` gives its recurrent kernels, in a form the batched chunk loop can run.

What it costs: a document of n tokens takes ceil(n / chunk) chunks of the scan, each a
state update of its own. (Scanning the short last chunks separately, batched by length,
pads less but measured no faster on CPU: a chunk's state update costs the same whatever
its length.)
"""

import heapq
from typing import NamedTuple

import torch


class DocumentLanes(NamedTuple):
    """index    [n_lanes * n_slots] token (flat over [B, T]) in every lane slot; pads
                point at B * T, one zero row appended by `pack`
    slot_of  [B * T] lane slot (flat) of every token
    resets   [n_lanes, n_slots // chunk] True before the first chunk of every document
    """

    index: torch.Tensor
    slot_of: torch.Tensor
    resets: torch.Tensor

    @staticmethod
    def build(starts: torch.Tensor, chunk_size: int) -> "DocumentLanes":
        """starts [B, T] (bool): a document begins at these tokens (and at every row's
        first token). One host sync, for the document lengths."""
        B, T = starts.shape
        C = chunk_size
        device = starts.device
        first = starts.clone()
        first[:, 0] = True
        begin = first.flatten().nonzero().flatten()  # flat token index of each document's start
        length = torch.diff(begin, append=torch.tensor([B * T], device=device))
        n_chunks = ((length + C - 1) // C).tolist()
        n_lanes = min(len(n_chunks), B)
        lane_of, offset = longest_first(n_chunks, n_lanes)  # per document: lane, first chunk there
        n_steps = max((o + n for o, n in zip(offset, n_chunks)), default=0)
        first_chunk = torch.tensor(lane_of, device=device) * n_steps + torch.tensor(offset, device=device)

        # every token's slot: its document's first slot plus its position in the document
        doc = torch.cumsum(first.flatten().long(), 0) - 1
        t = torch.arange(B * T, device=device)
        slot_of = first_chunk[doc] * C + t - begin[doc]
        index = torch.full((n_lanes * n_steps * C,), B * T, dtype=torch.long, device=device)
        index[slot_of] = t
        resets = torch.zeros(n_lanes * n_steps, dtype=torch.bool, device=device)
        resets[first_chunk] = True
        return DocumentLanes(index, slot_of, resets.view(n_lanes, n_steps))

    @property
    def n_lanes(self) -> int:
        return self.resets.shape[0]

    def pack(self, x: torch.Tensor, pad: float = 0.0) -> torch.Tensor:
        """x [B, T, ...] -> [n_lanes, n_slots, ...], `pad` on pads."""
        flat = x.reshape(-1, *x.shape[2:])
        flat = torch.cat([flat, flat.new_full((1, *x.shape[2:]), pad)])
        return flat.index_select(0, self.index).view(self.n_lanes, -1, *x.shape[2:])

    def unpack(self, y: torch.Tensor, batch_size: int) -> torch.Tensor:
        """y [n_lanes, n_slots, ...] -> [B, T, ...]: every token's slot."""
        flat = y.reshape(-1, *y.shape[2:]).index_select(0, self.slot_of)
        return flat.view(batch_size, -1, *y.shape[2:])


def longest_first(sizes: list[int], n_lanes: int) -> tuple[list[int], list[int]]:
    """Each document (of `sizes` chunks or slots) to the lane with the least so far,
    longest documents first (greedy makespan scheduling). Returns each document's lane
    and its offset there."""
    lanes = [(0, lane) for lane in range(n_lanes)]  # (filled so far, lane)
    lane_of, offset = [0] * len(sizes), [0] * len(sizes)
    for d in sorted(range(len(sizes)), key=lambda d: -sizes[d]):
        filled, lane = heapq.heappop(lanes)
        lane_of[d], offset[d] = lane, filled
        heapq.heappush(lanes, (filled + sizes[d], lane))
    return lane_of, offset
