"""Three lm-evaluation-harness tasks made from the embedded corpus's held-out stories, one
of each request type, for evaluating a checkpoint with no network:

    python -m titans_plugin.evals.lm_eval_tasks --out lm_eval_tasks [--docs 100]
    python -m titans_plugin.evaluate --model titans --model_args config=...,checkpoint=... \\
        --tasks titans_stories --include_path lm_eval_tasks

- titans_stories_perplexity (loglikelihood_rolling): whole stories; word and byte
  perplexity, bits per byte.
- titans_stories_where (multiple_choice): "Where does Ada keep the lamp?" with the
  story's places (and others) as choices; accuracy. The answer is stated once, early in
  the story: the long-range recall the memory is for.
- titans_stories_colour (generate_until): "What colour is the lamp of Ada? It is" -> the
  colour, greedy, up to the full stop; exact match.

Writes JSONL data and task YAMLs (data files named by absolute path, as lm-eval resolves
them from the working directory) and a group `titans_stories` of the three. Needs no
lm-eval to write."""

import argparse
import gzip
import json
import os
import random
import re

from titans_plugin.data.corpus import PLACES
from titans_plugin.data.paths import CORPUS_FILE

WHERE = re.compile(r"Where does (\w+) keep the (\w+)\? In the (\w+)\.")
COLOUR = re.compile(r"What colour is the (\w+) of (\w+)\? It is (\w+)\.")
N_CHOICES = 4

PERPLEXITY = """task: titans_stories_perplexity
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
WHERE_TASK = """task: titans_stories_where
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""
COLOUR_TASK = """task: titans_stories_colour
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
generation_kwargs:
  until: ["."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""
GROUP = """group: titans_stories
task:
  - titans_stories_perplexity
  - titans_stories_where
  - titans_stories_colour
"""


def held_out_stories(n: int) -> list[str]:
    """The first n stories of the corpus's validation split (never trained on)."""
    stories = []
    with gzip.open(CORPUS_FILE, "rt") as f:
        for line in f:
            doc = json.loads(line)
            if doc["split"] == "validation":
                stories.append(doc["text"])
                if len(stories) == n:
                    break
    return stories


def where_questions(story: str) -> list[dict]:
    """One multiple-choice item per "Where does ... keep ...?" in the story: the text up to
    the question, the true place and N_CHOICES - 1 others: the story's own other places
    first (the hard distractors), then places drawn at random (seeded by the item), so a
    model that knows only which places are common is at chance. Choices in alphabetical
    order."""
    items = []
    for m in WHERE.finditer(story):
        place = m.group(3)
        mentioned = [p for p in re.findall(r" in the (\w+)\.", story[: m.start()]) if p in PLACES]
        drawn = random.Random(f"{story[:80]}|{m.start()}").sample(PLACES, len(PLACES))
        others = [p for p in dict.fromkeys(mentioned + drawn) if p != place][: N_CHOICES - 1]
        choices = sorted([place, *others])
        context = story[: m.start()] + m.group(0)[: m.group(0).index("?") + 1]
        items.append({"context": context, "choices": [f"In the {p}." for p in choices], "gold": choices.index(place)})
    return items


def colour_questions(story: str) -> list[dict]:
    """One generation item per "What colour is ...?" in the story: the text up to "It is",
    the colour as the answer (with its leading space)."""
    items = []
    for m in COLOUR.finditer(story):
        question = m.group(0)
        context = story[: m.start()] + question[: question.rindex(" It is") + len(" It is")]
        items.append({"context": context, "answer": " " + m.group(3)})
    return items


def write_tasks(out: str, n_docs: int = 100) -> dict[str, int]:
    """Write the three tasks' data and YAMLs to `out`; the number of items per task."""
    if n_docs < 1:
        raise ValueError(f"--docs must be >= 1, got {n_docs}")
    os.makedirs(out, exist_ok=True)
    stories = held_out_stories(n_docs)
    data = {
        "titans_stories_perplexity": [{"text": s} for s in stories],
        "titans_stories_where": [item for s in stories for item in where_questions(s)],
        "titans_stories_colour": [item for s in stories for item in colour_questions(s)],
    }
    templates = {
        "titans_stories_perplexity": PERPLEXITY,
        "titans_stories_where": WHERE_TASK,
        "titans_stories_colour": COLOUR_TASK,
    }
    for name, items in data.items():
        path = os.path.abspath(os.path.join(out, f"{name}.jsonl"))
        with open(path, "w") as f:
            f.writelines(json.dumps(item) + "\n" for item in items)
        with open(os.path.join(out, f"{name}.yaml"), "w") as f:
            f.write(templates[name].format(data=json.dumps(path)))
    with open(os.path.join(out, "titans_stories.yaml"), "w") as f:
        f.write(GROUP)
    return {name: len(items) for name, items in data.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the tasks to (--include_path)")
    parser.add_argument("--docs", type=int, default=100, help="held-out stories to use (default 100)")
    args = parser.parse_args(argv)
    for name, n in write_tasks(args.out, args.docs).items():
        print(f"{name}: {n} items")


if __name__ == "__main__":
    main()
