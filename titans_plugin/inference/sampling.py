"""Text from a model: the prompt read in pieces through the incremental path, then one
token at a time (memory state and attention caches carried), so a prompt of any length
is read in bounded memory."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .trained import Trained


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy (argmax); otherwise softmax(logits / temperature), kept to the
    top_k most likely tokens (0 = all) and to the smallest set whose probability reaches
    top_p (1 = all), sampled with `seed`."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 = no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def pick(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """The next token [B] from logits [B, V]."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / sampling.temperature
    if sampling.top_k:  # exactly k tokens, ties at the k-th broken by topk's order
        top = scores.topk(min(sampling.top_k, scores.shape[-1]), dim=-1).indices
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
        scores = scores.masked_fill(~kept, float("-inf"))
    if sampling.top_p < 1:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each
        sorted_scores = sorted_scores.masked_fill(before >= sampling.top_p, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
    probs = scores.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


def generator_of(sampling: Sampling) -> torch.Generator | None:
    """The random stream of one generation call (None: torch's global one)."""
    return None if sampling.seed is None else torch.Generator().manual_seed(sampling.seed)


@torch.no_grad()
def token_stream(trained: Trained, prompts: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None):
    """Generated tokens [B], step after step, for prompts [B, L] of one length (rows share
    their caches' position), read in pieces of the training length; the caller stops when
    it has what it needs."""
    model, piece = trained.model, trained.seq_len
    if prompts.shape[1] == 0:
        raise ValueError("a prompt needs at least one token (the document prefix counts)")
    model.cover_positions(prompts.shape[1])
    caches = None
    for lo in range(0, prompts.shape[1], piece):
        logits, caches = model.forward_cached(prompts[:, lo : lo + piece].to(trained.device), caches)
    position = prompts.shape[1]
    while True:
        token = pick(logits[:, -1], sampling, generator)
        yield token
        model.cover_positions(position + 1)
        logits, caches = model.forward_cached(token[:, None], caches)
        position += 1


class StopText:
    """One row's generated text, released as soon as it cannot be part of a stop string:
    generation ends at the end-of-text token or at the first stop string (which is not
    part of the text)."""

    def __init__(self, trained: Trained, stop: Sequence[str] = ()):
        self.tokenizer, self.eos_id = trained.tokenizer, trained.tokenizer.eos_id
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.released = 0
        self.done = False

    def add(self, token: int) -> str:
        """The text this token makes final ('' while it may still be part of a stop string)."""
        if self.done:
            return ""
        if token == self.eos_id:
            return self.finish()
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        hits = [text.find(s, max(0, self.released - len(s))) for s in self.stop]
        hits = [h for h in hits if h >= 0]
        if hits:
            self.done = True
            return self._release(text, min(hits))
        hold = max((len(s) - 1 for s in self.stop), default=0)
        # a character whose bytes have not all been generated decodes as U+FFFD (one per
        # byte with a byte-fallback tokenizer): held until it is whole
        pending = len(text) - len(text.rstrip("\ufffd"))
        return self._release(text, len(text) - max(hold, pending))

    def finish(self) -> str:
        """The rest of the text (at the end of generation; nothing after a stop string)."""
        if self.done:
            return ""
        self.done = True
        return self._release(self.tokenizer.decode(self.ids), None)

    def _release(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else max(end, self.released)
        out, self.released = text[self.released : end], end
        return out


def generate(
    trained: Trained, prompt: list[int], *, max_new_tokens: int, sampling: Sampling, stop: Sequence[str] = ()
) -> Iterator[str]:
    """Text, piece by piece as it becomes final, after `prompt` (token ids, the document
    prefix included by the caller)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    text = StopText(trained, stop)
    if max_new_tokens == 0:
        return
    stream = token_stream(trained, torch.tensor([prompt]), sampling, generator_of(sampling))
    for _, token in zip(range(max_new_tokens), stream, strict=False):
        piece = text.add(int(token[0]))
        if piece:
            yield piece
        if text.done:
            return
    rest = text.finish()
    if rest:
        yield rest


def generate_batch(
    trained: Trained,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling,
    stop: Sequence[str] = (),
    generator: torch.Generator | None = None,
) -> list[str]:
    """The generated text of each prompt. Prompts of one length run as one batch (rows
    share their caches' position), each row ending on its own. One random stream for the
    whole call (`generator`, else one from sampling.seed): rows and repeats of a prompt
    draw different samples."""
    generator = generator or generator_of(sampling)
    out = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for rows in by_length.values():
        texts = [StopText(trained, stop) for _ in rows]
        stream = token_stream(trained, torch.tensor([prompts[i] for i in rows]), sampling, generator)
        for _, tokens in zip(range(max_new_tokens), stream, strict=False):
            for row, t, token in zip(rows, texts, tokens.tolist(), strict=True):
                out[row] += t.add(token)
            if all(t.done for t in texts):
                break
        for row, t in zip(rows, texts, strict=True):
            out[row] += t.finish()
    return out
