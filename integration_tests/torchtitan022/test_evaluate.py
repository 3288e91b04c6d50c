"""A checkpoint of the main job, scored by lm-evaluation-harness through
`python -m titans_plugin.evaluate` on the three local tasks made from the held-out
stories, and sampled by `python -m titans_plugin.generate`."""

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.debug_run import CONFIG, checkpoint_of
from devtools.full_pass import full_greedy, full_logprobs
from devtools.paths import REPO
from titans_plugin.evals.lm_eval_tasks import held_out_stories, write_tasks
from titans_plugin.inference.trained import load_trained

TASKS = ("titans_stories_perplexity", "titans_stories_where", "titans_stories_colour")


def _run(module: str, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True, cwd=REPO, env=env
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


@pytest.fixture(scope="module")
def trained(debug_mac_run):
    return load_trained(os.path.join(REPO, CONFIG), checkpoint_of(str(debug_mac_run[0])))


@pytest.fixture(scope="module")
def evaluated(debug_mac_run, tmp_path_factory):
    work = tmp_path_factory.mktemp("evaluate")
    write_tasks(str(work / "tasks"), n_docs=6)
    model_args = f"config={CONFIG},checkpoint={checkpoint_of(str(debug_mac_run[0]))},max_gen_toks=16"
    table = _run(
        "titans_plugin.evaluate",
        *("--model", "titans", "--model_args", model_args, "--tasks", "titans_stories"),
        *("--include_path", str(work / "tasks"), "--batch_size", "4", "--output_path", str(work / "results")),
        "--log_samples",
    )
    return table, work / "results"


def test_lm_eval_prints_its_table_for_every_task(evaluated):
    table, _ = evaluated
    for task, metric in zip(TASKS, ("word_perplexity", "acc", "exact_match"), strict=True):
        rows = [line for line in table.splitlines() if task in line]
        assert rows, table
        assert metric in table


def test_the_scores_are_those_of_the_trained_model(evaluated, trained):
    """lm-eval's logged rolling log-likelihood of each story equals the model's own summed
    token loss over the story from one full forward pass, to 1e-4 relative (fp32)."""
    _, results = evaluated
    [samples] = glob.glob(str(results / "**" / "samples_titans_stories_perplexity_*.jsonl"), recursive=True)
    logged = [json.loads(line) for line in Path(samples).read_text().splitlines()]
    assert len(logged) == 6
    for sample in logged:
        text = sample["doc"]["text"]
        got, _ = sample["word_perplexity"]  # (the document's log-likelihood, its word count)
        expected = full_logprobs(trained.model, [trained.prefix_id, *trained.encode(text)]).sum().item()
        assert math.isfinite(got)
        assert got == pytest.approx(expected, rel=1e-4)
    [summary] = glob.glob(str(results / "**" / "results_*.json"), recursive=True)
    metrics = json.loads(Path(summary).read_text())["results"]
    assert 0 <= metrics["titans_stories_where"]["acc,none"] <= 1
    assert 0 <= metrics["titans_stories_colour"]["exact_match,none"] <= 1


def test_a_long_document_is_scored_past_the_training_length(trained):
    """Five stories as one document: several pieces of the training length (512 tokens),
    every token predicted with all before it, as the full forward pass predicts it."""
    from titans_plugin.inference.scoring import document_logprob

    text = " ".join(held_out_stories(5))
    ids = trained.encode(text)
    assert len(ids) > 2 * trained.seq_len
    expected = full_logprobs(trained.model, [trained.prefix_id, *ids]).sum().item()
    assert document_logprob(trained, ids) == pytest.approx(expected, rel=1e-4)


def test_the_generation_cli_prints_the_greedy_continuation(debug_mac_run, trained):
    prompt = "This is a story about Ada and Ben. Ada keeps a red lamp in the attic."
    out = _run(
        "titans_plugin.generate",
        *("--config", CONFIG, "--checkpoint", checkpoint_of(str(debug_mac_run[0]))),
        *("--prompt", prompt, "--max-new-tokens", "24"),
    )
    ids = full_greedy(trained.model, [trained.prefix_id, *trained.encode(prompt)], 24, trained.tokenizer.eos_id)
    assert out == trained.tokenizer.decode(ids) + "\n"
    assert out.strip()


def test_the_generation_cli_reads_a_long_prompt_from_stdin_and_stops_at_a_stop_string(debug_mac_run):
    prompt = " ".join(held_out_stories(4)) + " This is a story about"
    out = _run(
        "titans_plugin.generate",
        *("--config", CONFIG, "--checkpoint", checkpoint_of(str(debug_mac_run[0]))),
        *("--prompt-file", "-", "--max-new-tokens", "40", "--stop", ".", "--temperature", "0.8", "--seed", "1"),
        stdin=prompt,
    )
    assert "." not in out
    assert out.strip()


def test_bad_generation_settings_name_the_flag():
    done = subprocess.run(
        [sys.executable, "-m", "titans_plugin.generate", "--config", CONFIG, "--checkpoint", "x"]
        + ["--prompt", "a", "--top-p", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert r"--top-p must be in (0, 1], got 2.0" in done.stderr
