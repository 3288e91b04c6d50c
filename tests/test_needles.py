"""Needle documents (titans_plugin/evals/needles.py) and the needle benchmark's pieces
(bench/needle_curve.py): prompts of the exact length with the needle where the depth says,
training sequences whose answer mask covers exactly the answers, the evaluation's greedy
read-back scoring a model that knows the answer as right and one that does not as wrong,
and the small models' parameter matching."""

import argparse
import json
import math
import random
import re
import subprocess
import sys

import pytest
import torch

from bench.needle_curve import ask
from bench.needle_training import needle_sequence
from bench.small_models import VARIANTS, matched_args, n_params
from devtools.paths import REPO
from titans_plugin.evals.needles import (
    KEY_WORDS,
    KINDS,
    characters_right,
    exact_match,
    make_document,
    make_needle,
    story_ids,
)
from titans_plugin.evals.niah import tokenizer
from titans_plugin.model import TitansTransformer


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def stories(tok):
    return story_ids(tok, "validation", 200)


@pytest.mark.parametrize("kind", KINDS)
def test_a_document_has_the_length_the_needle_at_its_depth_and_the_question_last(tok, stories, kind):
    for seed, depth in enumerate((0.0, 0.5, 1.0)):
        doc = make_document(tok, stories, 700, depth, kind, random.Random(seed))
        assert len(doc.prompt) == 700
        assert doc.answer.strip() in tok.decode(doc.prompt[doc.needle_at : doc.needle_at + 40])
        assert doc.answer.strip() not in tok.decode(doc.prompt[: doc.needle_at])
        question = make_needle(kind, random.Random(seed)).question
        tail = tok.decode(doc.prompt[-len(tok.encode(question).ids) :])
        assert tail.split(" for ")[0] == question.split(" for ")[0]
    lo = make_document(tok, stories, 2000, 0.1, kind, random.Random(1))
    hi = make_document(tok, stories, 2000, 0.9, kind, random.Random(1))
    assert 150 <= lo.needle_at <= 250
    assert 1700 <= hi.needle_at <= 1850


def test_distractors_are_other_keys_of_the_same_kind(tok, stories):
    doc = make_document(tok, stories, 900, 0.5, "number", random.Random(3), distractors=3)
    text = tok.decode(doc.prompt)
    asked = text.rsplit("special magic number for ", 1)[1].split(" is:")[0]
    stated = [part.split(" is:")[0] for part in text.split("special magic number for ")[1:-2]]
    assert len(stated) == 4
    assert stated.count(asked) == 1
    assert all(k in KEY_WORDS for k in stated)
    assert f"for {asked} is:{doc.answer}." in text
    with pytest.raises(ValueError, match="kind must be one of"):
        make_needle("colour", random.Random(0))
    with pytest.raises(ValueError, match="depth must be in"):
        make_document(tok, stories, 900, 1.5, "number", random.Random(0))
    with pytest.raises(ValueError, match="split must be"):
        story_ids(tok, "test")


def test_characters_right_gives_partial_credit_by_place():
    assert characters_right(" b0fd5e00-f7ec.", " b0faeb3b-f7ec") == 8 / 13
    assert characters_right("58213", " 58213") == 1.0
    assert characters_right(" 5821", " 58213") == 4 / 5  # a short answer loses the missing places
    assert characters_right(" 15821", " 58213") == 0.0  # shifted by one: nothing at its place
    assert characters_right("", " 58213") == 0.0


def test_exact_match_wants_the_whole_value():
    assert exact_match(" 58213.", " 58213")
    assert exact_match("58213", " 58213")
    assert exact_match(" 7f3a91c2-e0b4. The", " 7f3a91c2-e0b4")
    assert not exact_match(" 582134", " 58213")
    assert not exact_match(" 5821", " 58213")
    assert not exact_match(" The 58213", " 58213")


def test_training_sequences_mask_exactly_their_answers(tok):
    train = story_ids(tok, "train", 200)
    seq, mask = needle_sequence(tok, train, 1024, random.Random(5))
    assert len(seq) == 1025
    assert len(mask) == 1024
    starts = [i for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1])]
    assert len(starts) >= 1
    for i in starts:
        end = next((j for j in range(i, 1024) if not mask[j]), 1024)
        value = tok.decode(seq[i + 1 : end + 1]).strip()
        before = tok.decode(seq[: i + 1])
        assert before.endswith(("is:", "pass key is")), before[-60:]
        stated = before.rsplit("?", 1)[0]
        assert f" {value}. " in stated or f" {value}." in stated
        assert tok.decode(seq[end + 1 : end + 2]) == "."


def _statements_per_question(tok, seq) -> float:
    """Needle statements ("... for key is: value.") per question in a training sequence."""
    text = tok.decode(seq)
    questions = text.count("? The special magic")
    return (text.count(" is: ") - questions) / max(questions, 1)


def test_short_training_documents_carry_distractors_when_asked(tok):
    """With --distractors-from 96, documents of the default 256-token training carry
    distractor needles (other keys) besides their own; with the default 512 they never
    do at that length, as the published table's models were trained."""
    train = story_ids(tok, "train", 200)
    rng = random.Random(3)
    default = [needle_sequence(tok, train, 256, rng)[0] for _ in range(40)]
    rng = random.Random(3)
    short = [needle_sequence(tok, train, 256, rng, distractors_from=96)[0] for _ in range(40)]
    assert max(_statements_per_question(tok, s) for s in default) == 1.0
    assert max(_statements_per_question(tok, s) for s in short) > 1.0
    for seq in short:  # every answer still follows its own question
        assert len(seq) == 257


def test_distractors_can_start_after_a_step(tok):
    """--distractors-after: before that step the batches are the recipe's without
    distractors (the same draws), from it on they carry them."""
    import types

    from bench.needle_training import training_batch

    train = story_ids(tok, "train", 200)
    a = types.SimpleNamespace(train_len=256, batch=24, needle_frac=1.0, curriculum=0.0, steps=10)
    late = types.SimpleNamespace(**vars(a), distractors_from=96, distractors_after=5)
    plain = types.SimpleNamespace(**vars(a), distractors_from=512, distractors_after=0)
    before = training_batch(tok, train, late, random.Random(1), step=4)[0]
    assert torch.equal(before, training_batch(tok, train, plain, random.Random(1), step=4)[0])
    after = training_batch(tok, train, late, random.Random(1), step=5)[0]
    assert max(_statements_per_question(tok, row.tolist()) for row in after) > 1.0


class _Oracle(torch.nn.Module):
    """Reads a prompt through forward_cached and then says `answer`, token by token (or
    nothing useful when `knows` is False): stands in for a model in the evaluation path."""

    def __init__(self, answer: list[int], vocab: int, knows: bool):
        super().__init__()
        self.answer, self.vocab, self.knows = answer, vocab, knows
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.read = 0

    def cover_positions(self, length: int) -> None:
        pass

    def forward_cached(self, tokens, caches):
        said = (caches or 0) + (tokens.shape[1] == 1)  # answer tokens fed back so far
        self.read += tokens.shape[1]
        logits = torch.zeros(1, tokens.shape[1], self.vocab)
        token = self.answer[min(said, len(self.answer) - 1)] if self.knows else 0
        logits[0, -1, token] = 1.0
        return logits, said


def test_the_evaluation_scores_a_model_that_knows_the_answer_right_and_one_that_does_not_wrong(tok, stories):
    doc = make_document(tok, stories, 3000, 0.3, "uuid", random.Random(2))
    vocab = tok.get_vocab_size()
    right = _Oracle(doc.answer_ids + tok.encode(".").ids, vocab, True)
    assert ask(right, tok, doc, piece=512) == (True, 1.0)
    assert right.read >= 3000  # the whole prompt was read, in pieces
    assert ask(_Oracle(doc.answer_ids, vocab, False), tok, doc, piece=512) == (False, 0.0)


def test_memory_heads_of_a_recipe_are_built_recorded_and_read_back(tmp_path):
    from bench.needle_curve import load, parser
    from bench.needle_training import model_args, train

    a = parser().parse_args(["train", "--steps", "1", "--batch", "1", "--memory-heads", "2", "--out", str(tmp_path)])
    assert model_args("MAG", a).titans.memory_heads == 2
    assert train(("MAG", a))["memory_heads"] == 2
    fresh = parser().parse_args(["evaluate", "--out", str(tmp_path)])  # the default, 4, until the facts are read
    model, _ = load("MAG", fresh)
    assert fresh.memory_heads == 2
    assert model.layers["0"].memory.n_heads == 2
    facts = json.loads((tmp_path / "mag.json").read_text())
    del facts["memory_heads"]  # facts written before the option: the default
    (tmp_path / "mag.json").write_text(json.dumps(facts))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load("MAG", fresh)


def test_small_models_are_matched_within_three_percent():
    kw = dict(vocab=1854, window=64, max_len=2048, overrides={})
    sizes = {n: n_params(matched_args(c, **kw)) for n, c in VARIANTS.items()}
    target = sizes["MAC"]
    assert all(abs(s - target) / target < 0.03 for s in sizes.values()), sizes


@pytest.mark.slow  # three subprocesses, each training or reading a model
def test_train_evaluate_publish_end_to_end(tmp_path):
    base = [sys.executable, "-m", "bench.needle_curve"]
    common = ["--variants", "MAG", "SWA", "--out", str(tmp_path), "--workers", "1"]
    train = ["--steps", "2", "--train-len", "512", "--batch", "2"]
    evaluate = ["evaluate", "--lengths", "1024", "--samples", "2"]
    for cmd in (["train", *train], evaluate, [*evaluate, "--haystack", "repeat"], ["publish", "--no-write"]):
        proc = subprocess.run(base + cmd + common, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| MAG | " in proc.stdout
    assert "| 1,024 tokens |" in proc.stdout
    assert re.search(r"\| \d+ / \d+ \(2\) \|", proc.stdout)  # exact % / characters % (samples)
    assert "one passage repeated" in proc.stdout  # the filler haystack's table
    assert (tmp_path / "results.json").exists()
    assert (tmp_path / "mag.pt").exists()


def test_the_curriculum_grows_the_longest_document_log_linearly():
    from bench.needle_training import MIN_DOC, longest_document

    a = argparse.Namespace(train_len=2048, steps=100, curriculum=0.5)
    assert longest_document(0, a) == 2 * MIN_DOC
    assert longest_document(25, a) == int((2 * MIN_DOC * 2048) ** 0.5)  # halfway, on a log scale
    assert longest_document(50, a) == longest_document(99, a) == 2048
    a.curriculum = 0.0
    assert longest_document(0, a) == 2048  # off: every length from the start


def test_cells_stored_per_sample_or_as_counts_read_alike():
    from bench.needle_tables import cell_text, summary

    per_sample = {"hits": [True, False, False, True], "characters": [1.0, 0.5, 0.5, 1.0]}
    assert summary(per_sample) == (50.0, 75.0, 4)
    counted = {"exact": 7, "samples": 20, "characters_pct": 73}  # a cell kept without its lists
    assert summary(counted) == (35.0, 73, 20)
    assert cell_text(counted) == "35 / 73 (20)"
    assert cell_text({"hits": [True, True]}) == "100 (2)"  # no partial credit measured
    assert cell_text(None) == "-"


def test_publish_reads_the_store_and_names_a_row_trained_otherwise(tmp_path, capsys):
    import json

    from bench.needle_curve import RECIPE, cmd_publish

    recipe = {k: 1 for k in RECIPE} | {"train_len": 256, "long_context": True}
    base = dict(params=1000, train_seconds=60, lm_loss=1.0, answer_loss=0.5, date="2026-12-05", machine="m", **recipe)
    store = {
        "models": {"MAG": dict(base, name="MAG"), "MAC": dict(base, name="MAC", steps=2)},
        "cells": {
            "MAG@4096": {"name": "MAG", "length": 4096, "exact": 1, "samples": 4, "characters_pct": 50},
            "MAC@4096": {"name": "MAC", "length": 4096, "hits": [True, True], "characters": [1.0, 1.0]},
            "MAC@256": {"name": "MAC", "length": 256, "hits": [True], "checkpoint": "trained 2026-12-05 in 60 s"},
            "SWA@512": {"name": "SWA", "length": 512, "hits": [False]},  # a model not asked for: not shown
        },
    }
    (tmp_path / "results.json").write_text(json.dumps(store))
    a = argparse.Namespace(out=str(tmp_path), variants=["MAC", "MAG"], no_write=True, also=[])
    cmd_publish(a)
    out = capsys.readouterr().out
    assert "| 4,096 tokens |" in out
    assert "512 tokens" not in out  # the length of a model not asked for
    # MAC@256 was measured on this training of MAC, MAC@4096 on an unknown (earlier) one
    assert "| MAC | 1,000 | 2026-12-05 | 256 | 1 (last stage) | 1.000 | 0.500 | 100 (1) | 100 / 100 (2) † |" in out
    assert "| MAG (steps 1) | 1,000 | 2026-12-05 | 256 | 1 (last stage) | 1.000 | 0.500 | - | 25 / 50 (4) † |" in out


def _staged_store(path, run_seconds: int, cells: dict) -> str:
    import json

    recipe = {"train_len": 2048, "extends": "1000 steps at 2048 tokens", "memory_heads": 2}
    facts = dict(params=990, train_seconds=run_seconds, lm_loss=1.1, answer_loss=0.2, date="2026-12-06", machine="m")
    store = {"models": {"MAG": dict(facts, name="MAG", **recipe)}, "cells": {}}
    for length, hits in cells.items():
        store["cells"][f"MAG@{length}"] = {
            "name": "MAG",
            "length": length,
            "hits": hits,
            "checkpoint": f"trained 2026-12-06 in {run_seconds} s",
        }
    path.write_text(json.dumps(store))
    return str(path)


def test_publish_also_adds_a_staged_model_whose_copies_join(tmp_path, capsys):
    """publish --also LABEL=MODEL:FILE,FILE: a model trained in another folder gets a row of
    its own; two files of the same training run join, the cell with more samples standing,
    whichever file comes first; what its recipe changes beyond a later stage's is named."""
    import json

    from bench.needle_curve import RECIPE, cmd_publish

    recipe = {k: 1 for k in RECIPE} | {"train_len": 256, "long_context": True}
    base = dict(params=1000, train_seconds=60, lm_loss=1.0, answer_loss=0.5, date="2026-12-05", machine="m", **recipe)
    (tmp_path / "results.json").write_text(json.dumps({"models": {"MAG": dict(base, name="MAG")}, "cells": {}}))
    twenty = _staged_store(tmp_path / "a.json", 700, {2048: [True] * 4, 16384: [True, False]})
    sixty = _staged_store(tmp_path / "b.json", 700, {16384: [True, True, True, False]})

    def publish(*also: str) -> str:
        cmd_publish(argparse.Namespace(out=str(tmp_path), variants=["MAG"], no_write=True, also=list(also)))
        return capsys.readouterr().out

    row = "| MAG staged (memory_heads 2) | 990 | 2026-12-06 | 2,048 | 12 (last stage) | 1.100 | 0.200 |"
    row += " 100 (4) | 75 (4) |"
    for files in (f"{twenty},{sixty}", f"{sixty},{twenty}"):
        out = publish(f"MAG staged=MAG:{files}")
        assert row in out
        assert "| 2,048 tokens | 16,384 tokens |" in out

    other_run = _staged_store(tmp_path / "c.json", 800, {16384: [True]})
    for also, message in (
        [[f"X=MAG:{twenty},{other_run}"], "2 training runs of MAG"],
        [[f"X=MAC:{twenty}"], "0 training runs of MAC"],
        [[f"X=MAG:{twenty},{tmp_path / 'typo.json'}"], "no file"],
        [[f"MAG=MAG:{twenty}"], "a label of its own"],
        [[f"X=MAG:{twenty}", f"X=MAG:{other_run}"], "a label of its own"],
        [[f"X={twenty}"], "expected LABEL=MODEL:FILE"],
    ):
        with pytest.raises(SystemExit, match=message):
            publish(*also)


def test_by_kind_splits_each_cell_by_the_recorded_needle_kind():
    from bench.needle_curve import DEPTHS
    from bench.needle_tables import by_kind

    results = {
        "MAG@4096": {"hits": [True, False, True, True], "kinds": ["passkey", "number", "uuid", "passkey"]},
        "MAG@16384": {"exact": 0, "samples": 3},  # stored without kinds
        "SWA@4096": {"exact": 0, "samples": 3},
    }
    text = by_kind(results, ["MAG", "SWA"], [4096, 16384], DEPTHS)
    assert "| MAG | 100 / 0 / 100 | - |" in text
    assert "SWA" not in text  # no cell of it recorded kinds
    assert by_kind({"SWA@4096": {"exact": 0, "samples": 3}}, ["SWA"], [4096], DEPTHS) == ""


def test_half_lives_are_ln2_over_the_forgetting_rate_of_every_memory_head():
    import math

    from bench.needle_curve import half_lives
    from titans_plugin.memory.neural_memory import NeuralMemory
    from titans_plugin.model import TitansTransformer

    args = matched_args("M", vocab=64, window=8, max_len=16, overrides={}, dim=32)
    model = TitansTransformer(args).eval()
    with torch.no_grad():  # every head's alpha constant, and a different one per head
        for m in model.modules():
            if isinstance(m, NeuralMemory):
                m.w_gates.weight.zero_()
                m.w_gates.bias.view(m.n_heads, 3)[:, 2] = torch.linspace(-8.0, -2.0, m.n_heads)
    alphas = [
        m.config.max_forget * torch.sigmoid(b).item()
        for m in model.modules()
        if isinstance(m, NeuralMemory)
        for b in m.w_gates.bias.view(m.n_heads, 3)[:, 2]
    ]
    got = half_lives(model, list(range(40)), piece=16)
    assert got == pytest.approx([math.log(2) / -math.log1p(-a) for a in alphas], rel=1e-6)
    assert all("gates" not in vars(m) for m in model.modules())  # the recording hooks are gone


def test_the_forgetting_table_gives_each_models_half_life_quantiles():
    from bench.needle_tables import forgetting_table

    forgetting = {"MAL": {"tokens": 16384, "half_lives": [500000.0, 326.4, 20000.0, 7154.0]}}
    text = forgetting_table(forgetting, ["MAC", "MAL"])
    assert "| MAL | 4 | 326 | 13,577 | 500,000 | 2 of 4 |" in text  # median of 7,154 and 20,000
    assert "MAC" not in text.split("|---|")[1]  # no row without a measurement
    assert forgetting_table({}, ["MAL"]) == ""


def test_filler_cells_are_kept_apart_from_the_stories_cells():
    from bench.needle_tables import cell_key, filler_table
    from titans_plugin.evals.needles import FILLER, filler_ids

    assert cell_key("MAL", 4096) == "MAL@4096"
    assert cell_key("MAL", 4096, "repeat") == "MAL@4096/repeat"
    cells = {
        "MAL@4096": {"name": "MAL", "length": 4096, "exact": 1, "samples": 20},
        "MAL@4096/repeat": {"name": "MAL", "length": 4096, "hits": [True, False], "haystack": "repeat"},
    }
    text = filler_table(cells, ["MAL", "MAC"])
    assert "| MAL | 50 (2) |" in text
    assert "MAC" not in text.split("|---|")[1]
    assert filler_table({"MAL@4096": cells["MAL@4096"]}, ["MAL"]) == ""
    tok = tokenizer()
    ids = filler_ids(tok, repeats=3)
    assert tok.decode(ids).strip() == " ".join([FILLER] * 3)


def test_characters_right_are_split_by_the_recorded_depth():
    from bench.needle_curve import DEPTHS
    from bench.needle_tables import by_kind

    r = {"hits": [False] * 3, "characters": [0.2, 0.4, 0.9], "depths": [DEPTHS[0], DEPTHS[0], DEPTHS[-1]]}
    r["kinds"] = ["passkey", "number", "uuid"]
    text = by_kind({"MAL@4096": r}, ["MAL"], [4096], DEPTHS)
    assert "| MAL | 30 / - / - / - / 90 |" in text  # 10% depth: (0.2 + 0.4) / 2; 90% depth: 0.9
    assert "| MAL | 0 / 0 / 0 |" in text  # by kind


def test_evaluate_skips_a_stored_model_without_a_checkpoint(tmp_path, capsys):
    import json

    from bench.needle_curve import cmd_evaluate

    facts = {"name": "MAG", "train_len": 256, "date": "2026-12-03", "train_seconds": 60, "source": "imported"}
    (tmp_path / "results.json").write_text(json.dumps({"models": {"MAG": facts}, "cells": {}}))
    a = argparse.Namespace(out=str(tmp_path), variants=["MAG", "SWA"], lengths=None, full_max=65536)
    a.haystack, a.workers = "stories", 1
    cmd_evaluate(a)  # MAG: stored, no checkpoint; SWA: neither: nothing to run, no crash
    assert "MAG: no checkpoint" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == {}


def test_a_length_extension_starts_from_the_checkpoint_and_says_so(tmp_path):
    from bench.needle_curve import parser
    from bench.needle_training import train

    short = parser().parse_args(["train", "--steps", "2", "--batch", "2", "--out", str(tmp_path / "short")])
    source = train(("MAG", short))
    # lr 0: one step changes nothing, so the extended model must be the source's weights exactly
    args = ["train", "--steps", "1", "--batch", "1", "--train-len", "512", "--lr", "0", "--out", str(tmp_path / "long")]
    longer = parser().parse_args([*args, "--extend-from", str(tmp_path / "short")])
    facts = train(("MAG", longer))
    assert facts["train_len"] == 512
    assert facts["extends"] == f"2 steps at 256 tokens (trained {source['date']} in {source['train_seconds']:.0f} s)"
    before = torch.load(tmp_path / "short" / "mag.pt", weights_only=True)
    after = torch.load(tmp_path / "long" / "mag.pt", weights_only=True)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the architecture must be the checkpoint's; a missing model is named
    wider = parser().parse_args([*args, "--dim", "32", "--extend-from", str(tmp_path / "short")])
    with pytest.raises(SystemExit, match="trained with dim 64, not --dim 32"):
        train(("MAG", wider))
    finer = parser().parse_args([*args, "--memory-heads", "2", "--extend-from", str(tmp_path / "short")])
    with pytest.raises(SystemExit, match="trained with memory_heads 4, not --memory-heads 2"):
        train(("MAG", finer))
    with pytest.raises(SystemExit, match="no mac.pt there"):
        train(("MAC", longer))


def test_warm_caches_have_read_whole_training_lengths_of_stories():
    """--warm N: each batch starts from the caches left by k training lengths of stories,
    k drawn from 0 to N - 1 (k = 0: empty caches)."""
    from bench.needle_curve import parser
    from bench.needle_training import model_args, warm_caches

    a = parser().parse_args(["train", "--batch", "2", "--train-len", "64", "--warm", "3"])
    model = TitansTransformer(model_args("MAG", a)).eval()
    model.cover_positions(3 * 64)
    stories = [i % 300 for i in range(2000)]
    seen = set()
    for seed in range(8):
        pieces = random.Random(seed).randrange(3)
        caches = warm_caches(model, stories, a, random.Random(seed))
        read = 0 if caches is None else caches[0].memory.seen
        assert read == 64 * pieces
        seen.add(pieces)
    assert seen == {0, 1, 2}


def test_carried_and_warmed_training_run_and_are_recorded(tmp_path):
    from bench.needle_curve import cmd_train, parser
    from bench.needle_training import train

    common = ["train", "--steps", "3", "--batch", "2", "--train-len", "128", "--out", str(tmp_path)]
    for options in (["--carry", "2"], ["--warm", "2"], ["--warm", "2", "--warm-stream"]):
        facts = train(("MAG", parser().parse_args([*common, *options])))
        assert facts[options[0][2:]] == 2
        assert facts["warm_stream"] == ("--warm-stream" in options)
        assert math.isfinite(facts["lm_loss"])
    with pytest.raises(SystemExit, match="--carry 2 --warm 3: each at least 1, and at most one"):
        cmd_train(parser().parse_args([*common, "--carry", "2", "--warm", "3"]))
    with pytest.raises(SystemExit, match="--warm-stream reads a background stream for --warm N with N >= 2"):
        train(("MAG", parser().parse_args([*common, "--warm-stream"])))


class _CountingModel:
    """forward_cached's caches: how many pieces of stories have been read into them."""

    def forward_cached(self, tokens, caches):
        return None, (caches or 0) + 1


@pytest.mark.parametrize(
    ("options", "starts"),
    [
        (["--carry", "3"], [None, "end 0", "end 1", None, "end 3"]),  # each row's stream, anew every 3 steps
        (["--warm", "3", "--warm-stream"], [None, 1, 2, None, 1]),  # the background, one piece on each step
        ([], [None] * 5),
    ],
)
def test_each_step_starts_from_the_caches_its_option_says(options, starts):
    from bench.needle_curve import parser
    from bench.needle_training import StepCaches

    a = parser().parse_args(["train", "--batch", "2", "--train-len", "16", *options])
    streams = StepCaches(_CountingModel(), list(range(100)), a, random.Random(0))
    seen = []
    for step in range(5):
        seen.append(streams.start(step))
        streams.end(f"end {step}")
    assert seen == starts


def test_warm_draws_a_fresh_warm_up_for_every_step():
    from bench.needle_curve import parser
    from bench.needle_training import StepCaches

    a = parser().parse_args(["train", "--batch", "2", "--train-len", "16", "--warm", "3"])
    streams, draws = StepCaches(_CountingModel(), list(range(100)), a, random.Random(0)), random.Random(0)
    for step in range(12):
        pieces = draws.randrange(3)
        for _ in range(pieces):
            draws.randrange(100 - 16), draws.randrange(100 - 16)  # each row's place in the stories
        assert streams.start(step) == (pieces or None)
        streams.end("ignored")


@pytest.mark.parametrize("name", ["MAC", "MAG", "MAL", "LMM"])
def test_a_step_from_the_background_streams_caches_leaves_them_as_they_were(name):
    """--warm-stream trains from the background stream's caches and then reads on from
    them: the training forward must not change them in place."""
    from bench.needle_curve import parser
    from bench.needle_training import model_args, read_stories

    a = parser().parse_args(["train", "--batch", "2", "--train-len", "64"])
    model = TitansTransformer(model_args(name, a))
    model.cover_positions(2 * 64)
    stories = [i % 300 for i in range(2000)]
    background = read_stories(model, stories, a, random.Random(0), None)
    held = [t for t in torch.utils._pytree.tree_leaves(background) if isinstance(t, torch.Tensor)]
    # held for the whole run: none keeps the read piece's projections alive
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in held)
    leaves = [t.clone() for t in held]
    logits, _ = model.forward_stream(torch.tensor([stories[:64], stories[64:128]]), background)
    logits.sum().backward()
    after = [t for t in torch.utils._pytree.tree_leaves(background) if isinstance(t, torch.Tensor)]
    assert all(torch.equal(x, y) for x, y in zip(leaves, after, strict=True))
