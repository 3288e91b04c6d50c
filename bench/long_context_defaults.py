"""Should the long-context setting (`forget_init = 1e-5`, `max_grad_norm = 4`) be the default?
The evidence, in two parts:

    python -m bench.long_context_defaults quality     # MAG and MAC, both settings, seeds 0-2 (~7 min a run)
    python -m bench.long_context_defaults stability   # 50 steps at the paper's 170M shape, both settings
    python -m bench.long_context_defaults publish     # the tables and the decision into docs/results.md

quality: the language-model table's runs (bench/lm_quality.py: debugmodel, 8 x 512 tokens,
400 steps, validation loss at the end) for MAG and MAC with today's defaults and with the
setting, for each seed (`debug.seed`: the initialisation). The rule: the setting may become
the default if, for both models, its validation loss averaged over the seeds is within
0.01 of the defaults' average.

stability: the 170M flavor (width 768, 12 layers, MAC, memory depth 2, expansion 4) on the
embedded corpus, 1 x 1,024 tokens a step (two MAC segments), AdamW 4e-4 after 10 warm-up
steps, fp32, for 50 steps: it must stay finite with a bounded gradient norm; the memory's
clip activity (clip_active, every layer, every step) is read from TensorBoard.

Every run is stored in docs/long_context_defaults.json as it finishes (a stopped sweep
resumes where it stopped; --rerun measures stored runs again).
"""

import argparse
import glob
import json
import math
import os
import statistics
import time

from bench.common import REPO, machine, publish, table
from bench.lm_quality import run as lm_run
from devtools.torchrun import losses, run_torchrun

SETTINGS = {"defaults": [], "long-context": ["forget_init=1e-5", "max_grad_norm=4"]}
MODELS = {"debug_mag": "MAG (GA)", "debug_mac": "MAC (CA)"}
SEEDS = (0, 1, 2)
TOLERANCE = 0.01  # validation loss, averaged over seeds
RESULTS = os.path.join(REPO, "docs", "long_context_defaults.json")
STABILITY_STEPS = 50
STABILITY_ARGS = [
    "--model.hf_assets_path", "builtin",
    "--training.dataset", "titans_stories",
    "--training.seq_len", "1024",
    "--training.local_batch_size", "1",
    "--training.global_batch_size", "1",
    "--training.mixed_precision_param", "float32",
    "--lr_scheduler.warmup_steps", "10",
    "--metrics.log_freq", "1",
    "--checkpoint.no-enable",
    "--compile.no-enable",
    "--activation_checkpoint.mode", "none",
]  # fmt: skip


def load() -> dict:
    if not os.path.exists(RESULTS):
        return {"quality": {}, "stability": {}}
    with open(RESULTS) as f:
        return json.load(f)


def record(section: str, key: str, result: dict) -> None:
    """Store one run, re-reading the file first so that runs stored meanwhile are kept."""
    stored = load()
    stored.setdefault(section, {})[key] = result
    tmp = RESULTS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stored, f, indent=1, sort_keys=True)
    os.replace(tmp, RESULTS)  # a run stopped mid-write never loses the runs stored before


def quality(models: list[str], seeds: list[int], settings: list[str], rerun: bool) -> None:
    stored = load()["quality"]
    for seed in seeds:  # seed by seed: a stopped sweep still compares like with like
        for name in models:
            for setting in settings:
                overrides = SETTINGS[setting]
                key = f"{name}/{setting}/{seed}"
                if key in stored and not rerun:
                    continue
                r = lm_run(name, 400, 100, overrides, ("--debug.seed", str(seed)))
                final = r["val"][max(r["val"])]
                print(f"{key}: validation loss {final:.4f} ({r['s'] / 60:.1f} min)", flush=True)
                result = {
                    "val": final,
                    "train": r["train"][max(r["train"])],
                    "minutes": round(r["s"] / 60, 1),
                    "date": r["date"],
                    "machine": r["machine"],
                }
                record("quality", key, result)


def tensorboard_scalars(folder: str, since: float = 0.0) -> dict[str, dict[int, float]]:
    """Every scalar written to TensorBoard under `folder` by event files last written at or
    after `since` (seconds since the epoch: earlier runs into the same folder are left out):
    tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True):
        if os.path.getmtime(events) < since:
            continue
        acc = EventAccumulator(events, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def stability(settings: list[str], steps: int = STABILITY_STEPS) -> None:
    for setting in settings:
        folder = f"./outputs/long_context_defaults/170m_{setting}"
        args = [*STABILITY_ARGS, "--training.steps", str(steps), "--job.dump_folder", folder]
        for item in SETTINGS[setting]:
            field, _, value = item.partition("=")
            args += [f"--titans.{field}", value]
        t0, started = time.perf_counter(), time.time()
        rc, log = run_torchrun("train_configs/paper_170m_mac.toml", args, timeout=7200)
        if rc != 0:
            raise RuntimeError(f"170M {setting} failed:\n{log[-3000:]}")
        scalars = tensorboard_scalars(os.path.join(REPO, folder), since=started)
        grad = scalars.get("grad_norm", {})
        clip = {t: v for t, v in scalars.items() if t.endswith("/clip_active")}
        if not grad or not clip:
            raise RuntimeError(f"170M {setting}: no grad_norm or clip_active in TensorBoard (tags: {sorted(scalars)})")
        loss = losses(log)
        per_step_clip = {s: statistics.mean(c[s] for c in clip.values() if s in c) for s in grad}
        record("stability", setting, {
            "loss": loss,
            "grad_norm": grad,
            "clip_active_mean": per_step_clip,
            "clip_active_layers": {t.split("/")[1]: statistics.mean(c.values()) for t, c in clip.items()},
            "steps": steps,
            "finite": all(math.isfinite(v) for v in [*loss.values(), *grad.values()]),
            "minutes": round((time.perf_counter() - t0) / 60, 1),
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(dated=False),
        })  # fmt: skip
        clip_mean = statistics.mean(per_step_clip.values())
        first, last = loss[min(loss)], loss[max(loss)]
        print(f"170M {setting}: loss {first:.3f} -> {last:.3f}, max grad norm {max(grad.values()):.2f}, "
              f"clip_active mean {clip_mean:.3f}", flush=True)  # fmt: skip


def decision(stored: dict) -> tuple[list[list[str]], bool]:
    """One row per model: per-seed losses for each setting, their means, the difference; and
    whether the setting is within the tolerance for every model over the full set of seeds."""
    rows, ok = [], True
    for name, label in MODELS.items():
        runs = {s: {seed: stored["quality"].get(f"{name}/{s}/{seed}") for seed in SEEDS} for s in SETTINGS}
        paired = [seed for seed in SEEDS if all(runs[s][seed] for s in SETTINGS)]
        mean = {s: statistics.mean(runs[s][seed]["val"] for seed in paired) if paired else math.nan for s in SETTINGS}
        delta = mean["long-context"] - mean["defaults"]
        ok = ok and len(paired) == len(SEEDS) and delta <= TOLERANCE
        cells = [", ".join(f"{runs[s][seed]['val']:.4f}" if runs[s][seed] else "-" for seed in SEEDS) for s in SETTINGS]
        rows.append([label, *cells, *(f"{mean[s]:.4f}" for s in SETTINGS), f"{delta:+.4f}", str(len(paired))])
    return rows, ok


def render() -> None:
    stored = load()
    rows, ok = decision(stored)
    header = ["model", "defaults (seeds 0, 1, 2)", "long-context (seeds 0, 1, 2)", "defaults mean",
              "long-context mean", "difference", "seeds paired"]  # fmt: skip
    dates = sorted({r["date"] for r in stored["quality"].values()})
    machines = sorted({r["machine"] for r in stored["quality"].values()})
    doc = (
        f"Machine: {'; '.join(machines)}, measured {', '.join(dates)}. Command: `python -m bench.long_context_defaults "
        f"quality`. Validation loss at step 400 (debugmodel, 8 x 512 tokens; the language-model table's setup), "
        f"defaults against `forget_init = 1e-5`, `max_grad_norm = 4`, seeds 0-2.\n\n{table(header, rows)}\n\n"
        f"Rule: the setting's mean within {TOLERANCE} of the defaults' mean for both models over all 3 seeds: "
        f"**{'met' if ok else 'not met'}**.\n"
    )
    stab = stored.get("stability", {})
    if stab:
        srows = []
        for setting, r in stab.items():
            loss, grad = r["loss"], r["grad_norm"]
            clip = list(r["clip_active_mean"].values())
            layers = r["clip_active_layers"]
            first, last = loss[min(loss, key=int)], loss[max(loss, key=int)]
            srows.append([
                setting, str(r["steps"]), "yes" if r["finite"] else "no", f"{first:.3f} -> {last:.3f}",
                f"{max(grad.values()):.2f}", f"{grad[max(grad, key=int)]:.2f}",
                f"{statistics.mean(clip):.3f} ({min(layers.values()):.3f}-{max(layers.values()):.3f})",
                f"{r['minutes']:.0f}", r["date"],
            ])  # fmt: skip
        sheader = ["setting", "steps", "finite", "loss (first -> last)", "max grad norm", "last grad norm",
                   "clip_active mean (layer range)", "minutes", "measured"]  # fmt: skip
        doc += (
            f"\n170M shape (`python -m bench.long_context_defaults stability [--steps N]`; 1 x 1,024 "
            f"tokens a step, AdamW 4e-4 after 10 warm-up steps, fp32, embedded corpus; gradient norm before "
            f"torchtitan's clip at 1; clip_active: the fraction of tokens whose inner gradient the memory clips, "
            f"averaged over layers and steps):\n\n{table(sheader, srows)}\n"
        )
    publish(doc, "results.md", "long-context-defaults", True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["quality", "stability", "publish"])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--rerun", action="store_true", help="measure runs that are already stored again")
    p.add_argument("--steps", type=int, default=STABILITY_STEPS, help="stability: training steps at the 170M shape")
    a = p.parse_args()
    if a.step == "quality":
        quality(a.models, a.seeds, a.settings, a.rerun)
    elif a.step == "stability":
        stability(a.settings, a.steps)
    render()


if __name__ == "__main__":
    main()
