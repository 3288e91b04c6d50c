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
    """token_at [n_lanes * n_slots] token (flat over [B, T]) in every lane slot; pads
                point at B * T, one zero row appended by `pack`
    slot_of  [B * T] lane slot (flat) of every token
    resets   [n_lanes, n_slots // chunk] True before the first chunk of every document
    """

    token_at: torch.Tensor
    slot_of: torch.Tensor
    resets: torch.Tensor

    @staticmethod
    def build(starts: torch.Tensor, chunk_size: int) -> "DocumentLanes":
        """starts [B, T] (bool): a document begins at these tokens (and at every row's
        first token). One host sync, for the document lengths."""
        B, T = starts.shape
        first = starts.clone()
        first[:, 0] = True
        slot_of, doc_slot, n_slots, n_lanes = place_documents(first, chunk_size)
        index = torch.full((n_lanes * n_slots,), B * T, dtype=torch.long, device=starts.device)
        index[slot_of] = torch.arange(B * T, device=starts.device)
        resets = torch.zeros(n_lanes * n_slots // chunk_size, dtype=torch.bool, device=starts.device)
        resets[doc_slot // chunk_size] = True
        return DocumentLanes(index, slot_of, resets.view(n_lanes, n_slots // chunk_size))

    @property
    def n_lanes(self) -> int:
        return self.resets.shape[0]

    def pack(self, x: torch.Tensor, pad: float = 0.0) -> torch.Tensor:
        """x [B, T, ...] -> [n_lanes, n_slots, ...], `pad` on pads."""
        flat = x.reshape(-1, *x.shape[2:])
        flat = torch.cat([flat, flat.new_full((1, *x.shape[2:]), pad)])
        return flat.index_select(0, self.token_at).view(self.n_lanes, -1, *x.shape[2:])

    def unpack(self, y: torch.Tensor, batch_size: int) -> torch.Tensor:
        """y [n_lanes, n_slots, ...] -> [B, T, ...]: every token's slot."""
        flat = y.reshape(-1, *y.shape[2:]).index_select(0, self.slot_of)
        return flat.view(batch_size, -1, *y.shape[2:])


def place_documents(first: torch.Tensor, align: int, lead: int = 0):
    """Where every document of a packed batch goes in lanes: first [B, T] (bool) True at
    every document's first token (every row's first token included). Each document gets
    `lead` free slots, then its tokens, padded to a multiple of `align`; documents go to
    min(B, documents) lanes, longest first. One host sync, for the lengths.

    Returns slot_of [B * T] (every token's flat slot), doc_slot [documents] (each
    document's first slot, flat), the slots per lane, and the lane count."""
    B, T = first.shape
    device = first.device
    flat = first.flatten()
    begin = flat.nonzero().flatten()  # flat token index of each document's start
    length = torch.diff(begin, append=torch.tensor([B * T], device=device))
    footprint = ((length + lead + align - 1) // align * align).tolist()
    n_lanes = min(len(footprint), B)
    lane_of, offset = longest_first(footprint, n_lanes)
    n_slots = max((o + f for o, f in zip(offset, footprint, strict=True)), default=0)
    doc_slot = torch.tensor(lane_of, device=device) * n_slots + torch.tensor(offset, device=device)
    doc = torch.cumsum(flat.long(), 0) - 1
    slot_of = doc_slot[doc] + lead + torch.arange(B * T, device=device) - begin[doc]
    return slot_of, doc_slot, n_slots, n_lanes


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
