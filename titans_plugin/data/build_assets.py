"""Rebuild the shipped corpus and tokenizer (committed under titans_plugin/assets/).

    python -m titans_plugin.data.build_assets

Deterministic: the same code gives the same files."""

import gzip
import json
import os

from .corpus import generate
from .paths import CORPUS_FILE, TOKENIZER_DIR

N_TRAIN_DOCS = 15000
N_VALIDATION_DOCS = 500
VOCAB_SIZE = 2048


def write_corpus() -> None:
    os.makedirs(os.path.dirname(CORPUS_FILE), exist_ok=True)
    docs = generate(N_TRAIN_DOCS + N_VALIDATION_DOCS, seed=0)
    with gzip.GzipFile(CORPUS_FILE, "wb", mtime=0) as f:
        for i, text in enumerate(docs):
            split = "validation" if i >= N_TRAIN_DOCS else "train"
            f.write((json.dumps({"text": text, "split": split}) + "\n").encode())


def train_tokenizer() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(generate(5000, seed=1), trainer=trainer)
    os.makedirs(TOKENIZER_DIR, exist_ok=True)
    tok.save(os.path.join(TOKENIZER_DIR, "tokenizer.json"))
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "add_bos_token": True,
        "add_eos_token": True,
        "model_max_length": 1 << 20,
    }
    with open(os.path.join(TOKENIZER_DIR, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    write_corpus()
    train_tokenizer()
    print(f"wrote {CORPUS_FILE} and {TOKENIZER_DIR}")
