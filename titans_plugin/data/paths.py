"""Where the shipped assets live (inside the package, so an installed plugin has them)."""

import os

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
# Not named *test*.json: HF datasets would infer the split "test" from such a name.
CORPUS_FILE = os.path.join(ASSETS, "corpus", "titans_stories.jsonl.gz")
TOKENIZER_DIR = os.path.join(ASSETS, "tokenizer")
