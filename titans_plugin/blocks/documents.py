"""Packed documents: where each document of a packed batch sits, and a layout that gives
every document a fresh, aligned start.

A pretraining batch packs several documents into each row (torchtitan's text datasets
concatenate BOS ... EOS documents and cut the stream into windows). With
`titans.attn_mask_type = "block_causal"` the model computes, for every token, the index
of its document within its row (`document_ids`) and hands that to every block.

Attention honours it with a mask. A memory layer needs more: run alone on a document,
its chunk grid (and MAC's segment grid) starts at the document's first token, and its
state starts from the learned initial memory. The memory lays documents out for its scan
itself (memory/lanes.py). `DocumentLayout` does it for a whole block: it moves every
document to a slot that is a multiple of `align` (MAC: its segment length), with `lead`
free slots in front (MAL's memory stream: the persistent tokens, align 1), in lanes. In
that layout every grid is anchored at every document start, and whatever a pad slot
computes never reaches a real token: pads come after their document's last token,
causally, and the next document restarts the state. The cost is the padding: under
`align` slots per document.
"""

from typing import NamedTuple

import torch

from titans_plugin.memory import place_documents


def document_ids(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] index of each token's document within its row: a document ends with its
    EOS token (torchtitan's block_causal convention), so the count of EOS tokens before
    a position is its document index. The first document of a row may be the tail of one
    cut by the previous window; it is treated as a document of its own."""
    eos = (tokens == eos_id).long()
    ids = torch.zeros_like(tokens, dtype=torch.long)
    ids[:, 1:] = torch.cumsum(eos[:, :-1], dim=1)
    return ids


def document_ids_from_positions(positions: torch.Tensor) -> torch.Tensor:
    """The document index of every token [B, T] from per-document positions (0 where a
    document starts, as torchtitan 0.3's dataloader yields them); a row's first token
    always starts one."""
    starts = positions == 0
    starts[:, 0] = True
    return starts.long().cumsum(dim=1) - 1


def same_document(ids_q: torch.Tensor, ids_k: torch.Tensor) -> torch.Tensor:
    """[..., T, S] True where query and key belong to the same document."""
    return ids_q.unsqueeze(-1) == ids_k.unsqueeze(-2)


def document_starts(ids: torch.Tensor) -> torch.Tensor:
    """[B, T] True at the first token of every document (and of every row)."""
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return first


def positions_in_document(ids: torch.Tensor) -> torch.Tensor:
    """[B, T] position of each token within its document (0 at its first token)."""
    t = torch.arange(ids.shape[1], device=ids.device)
    return t - torch.cummax(torch.where(document_starts(ids), t, 0), dim=1).values


def check_document_ids(ids: torch.Tensor, shape) -> None:
    """The attention_masks a packed batch passes: what document_ids returns for the tokens."""
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64) or ids.shape != shape:
        raise ValueError(
            f"attention_masks must be document ids: an integer tensor shaped like the tokens {list(shape)} "
            f"(titans.attn_mask_type='block_causal'), got {type(ids).__name__} "
            f"{getattr(ids, 'dtype', '')} {list(getattr(ids, 'shape', []))}"
        )
    if (ids[:, 1:] < ids[:, :-1]).any():  # a document must not reappear later in its row
        raise ValueError("document ids must never decrease along a row")


class DocumentLayout(NamedTuple):
    """Packed documents moved into lanes, [B, T] tokens -> [B, T'] slots (as many lanes as
    rows): every document starts at a multiple of `align` after `lead` free slots, and
    goes, longest first, to the least filled lane, so the lanes end nearly together whatever
    the rows' mix of documents.

    slot_of    [B * T] flat slot (over [B, T']) of every token
    starts     [B, T'] True at the first slot of each document (its lead slots first)
    positions  [B, T'] position of a slot within its document (0 at the first token,
               negative on lead slots; pads continue their document's count, clamped to T-1)
    lead       slots in front of each document
    """

    slot_of: torch.Tensor
    starts: torch.Tensor
    positions: torch.Tensor
    lead: int

    @staticmethod
    def build(ids: torch.Tensor, align: int, lead: int = 0) -> "DocumentLayout":
        """One host sync, for the documents' lengths."""
        B, T = ids.shape
        slot_of, doc_slot, n_slots, _ = place_documents(document_starts(ids), align, lead)
        starts = torch.zeros(B * n_slots, dtype=torch.bool, device=ids.device)
        starts[doc_slot] = True
        starts = starts.view(B, n_slots)  # B lanes: every row holds at least one document
        # every lane opens with a document, so a slot's document starts at the last start
        s = torch.arange(n_slots, device=ids.device)
        last_start = torch.cummax(torch.where(starts, s, 0), dim=1).values
        positions = (s - last_start - lead).clamp(max=max(T - 1, 0))
        return DocumentLayout(slot_of, starts, positions, lead)

    @property
    def n_slots(self) -> int:
        return self.starts.shape[1]

    def pack(self, x: torch.Tensor, lead_fill: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, ...] -> [B, T', ...]: pads are zeros, lead slots `lead_fill` [lead, ...]."""
        B, feature = x.shape[0], x.shape[2:]
        flat = x.reshape(-1, *feature)
        index = self.slot_of.view(-1, *[1] * len(feature)).expand_as(flat)
        out = flat.new_zeros(B * self.n_slots, *feature).scatter(0, index, flat).view(B, self.n_slots, *feature)
        if self.lead and lead_fill is not None:
            on_lead = (self.positions < 0).view(*self.positions.shape, *[1] * len(feature))
            fill = lead_fill.to(x.dtype)[(self.positions + self.lead).clamp(0, self.lead - 1)]
            out = torch.where(on_lead, fill, out)
        return out

    def unpack(self, y: torch.Tensor) -> torch.Tensor:
        """y [B, T', ...] -> [B, T, ...]: each token's slot."""
        flat = y.reshape(-1, *y.shape[2:]).index_select(0, self.slot_of)
        return flat.view(y.shape[0], -1, *y.shape[2:])


def run_memory_on_documents(memory, x: torch.Tensor, docs: torch.Tensor, prefix: torch.Tensor | None = None):
    """A memory layer over the packed batch x [B, T, dim]: every document scanned from
    the initial memory on its own chunk grid, as if it were alone (the memory moves the
    documents for its scan itself, memory/lanes.py). `prefix` [N_p, dim] (MAL's
    persistent tokens) opens every document's stream, its outputs dropped: the stream
    gets N_p slots in front of every document, no alignment."""
    if prefix is None:
        return memory.forward_documents(x, document_starts(docs))
    stream = DocumentLayout.build(docs, align=1, lead=prefix.shape[0])
    return stream.unpack(memory.forward_documents(stream.pack(x, prefix), stream.starts))
