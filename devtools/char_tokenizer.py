"""A character tokenizer for the tiny models' 50-token vocabulary, with torchtitan's
tokenizer interface (encode(text, add_bos=, add_eos=), decode(ids), bos_id, eos_id): lets
scoring and sampling tests read token ids back as text one to one (BOS and EOS decode as
"^" and "$"). Without an end-of-text token (`with_eos=False`) generation never stops
early, whatever a random model prefers."""

import string

CHARS = string.ascii_lowercase + " .,?!'" + "ABCDEFGHIJKLMNOP"  # 48 characters
BOS_ID, EOS_ID = 48, 49


class CharTokenizer:
    bos_id = BOS_ID

    def __init__(self, with_eos: bool = True):
        self.eos_id = EOS_ID if with_eos else None

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        unknown = set(text) - set(CHARS)
        if unknown:
            raise ValueError(f"CharTokenizer: characters outside its alphabet: {sorted(unknown)}")
        return [BOS_ID] * add_bos + [CHARS.index(c) for c in text] + [EOS_ID] * add_eos

    def decode(self, ids) -> str:
        return "".join((CHARS + "^$")[i] for i in ids)
