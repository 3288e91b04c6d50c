"""Should the long-context setting (`forget_init = 1e-5`, `max_grad_norm = 4`) be the default?
The evidence, in two parts:

    python -m bench.long_context_defaults quality     # MAG and MAC, both settings, seeds 0-2 (~7 min a run)
    python -m bench.long_context_defaults stability   # 50 steps at the paper's 170M shape, both settings
    python -m bench.long_context_defaults publish     # the tables and the decision into docs/results.md

quality: the language-model table's runs (bench/lm_quality.py: debugmodel, 8 x 512 tokens,
400 steps, validation loss at the end) for MAG and MAC with today's defaults and with the
setting, for each seed (`debug.seed`: the initialisation; the data order is fixed). The
rule: the setting may become the default if, for both models, its validation loss
averaged over the seeds is at most 0.01 above the defaults' average.

stability: the 170M flavor (width 768, 12 layers, MAC, memory depth 2, expansion 4) on the
embedded corpus, 1 x 1,024 tokens a step (two MAC segments), AdamW 4e-4 after 10 warm-up
steps, fp32, for 50 steps: whether loss and gradient norm stay finite, and the gradient
norm's course (before torchtitan's clip); the memory's clip activity (clip_active, every
layer, every step) is read from TensorBoard. A run that fails is stored with its exit code.

Drawing the plot needs the bench extra (matplotlib). Every run is stored in
docs/long_context_defaults.json as it finishes (a stopped sweep
resumes where it stopped; --rerun measures stored runs again).
"""

import argparse
import glob
import math
import os
import statistics
import time

from bench.common import REPO, machine, publish, read_store, store, table
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
    return {"quality": {}, "stability": {}, **read_store(RESULTS)}


def record(section: str, key: str, result: dict) -> None:
    store(RESULTS, section, key, result)


def label(setting: str, gate_scale_init: float | None) -> str:
    """A setting's name in the stored runs: with a gate start, that value beside it."""
    return setting if gate_scale_init is None else f"{setting}, gate_scale_init {gate_scale_init:g}"


def overrides_of(setting: str, gate_scale_init: float | None) -> list[str]:
    return SETTINGS[setting] + ([] if gate_scale_init is None else [f"gate_scale_init={gate_scale_init:g}"])


def quality(
    models: list[str], seeds: list[int], settings: list[str], rerun: bool, gate_scale_init: float | None = None
) -> None:
    """`gate_scale_init`: also start the gates' scale there; stored as a setting of its own
    (say "long-context, gate_scale_init 0.02"), judged against the defaults like the others."""
    stored = load()["quality"]
    for seed in seeds:  # seed by seed: a stopped sweep still compares like with like
        for name in models:
            for setting in settings:
                overrides = overrides_of(setting, gate_scale_init)
                key = f"{name}/{label(setting, gate_scale_init)}/{seed}"
                if key in stored and stored[key].get("overrides", overrides) == overrides and not rerun:
                    continue  # measured with these overrides already
                r = lm_run(name, 400, 100, overrides, ("--debug.seed", str(seed)))
                final = r["val"][max(r["val"])]
                print(f"{key}: validation loss {final:.4f} ({r['s'] / 60:.1f} min)", flush=True)
                result = {
                    "val": final,
                    "train": r["train"][max(r["train"])],
                    "minutes": round(r["s"] / 60, 1),
                    "date": r["date"],
                    "machine": r["machine"],
                    "overrides": overrides,
                }
                record("quality", key, result)


def tensorboard_scalars(folder: str, since: float = 0.0) -> dict[str, dict[int, float]]:
    """Every scalar written to TensorBoard under `folder` by event files last written at or
    after `since` (seconds since the epoch: earlier runs into the same folder are left out):
    tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    files = glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True)
    for events in sorted(files, key=os.path.getmtime):  # the newest file wins a step two files share
        if os.path.getmtime(events) < since:
            continue
        acc = EventAccumulator(events, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def stability(settings: list[str], steps: int = STABILITY_STEPS, gate_scale_init: float | None = None) -> None:
    """`gate_scale_init`: also start the MAC gates' scale there (docs/blocks.md); the run is
    stored under the setting's name plus that value."""
    for setting in settings:
        name = label(setting, gate_scale_init)
        folder = f"./outputs/long_context_defaults/170m_{name.replace(', ', '_').replace(' ', '_')}"
        args = [*STABILITY_ARGS, "--training.steps", str(steps), "--job.dump_folder", folder]
        if gate_scale_init is not None:
            args += ["--titans.gate_scale_init", str(gate_scale_init)]
        for item in SETTINGS[setting]:
            field, _, value = item.partition("=")
            args += [f"--titans.{field}", value]
        t0, started = time.perf_counter(), time.time()
        rc, log = run_torchrun("train_configs/paper_170m_mac.toml", args, timeout=7200)
        scalars = tensorboard_scalars(os.path.join(REPO, folder), since=started)
        grad = scalars.get("grad_norm", {})
        clip = {t: v for t, v in scalars.items() if t.endswith("/clip_active")}
        loss = losses(log)
        steps_seen = sorted(s for s in grad if any(s in c for c in clip.values()))
        base = {
            "steps": steps,
            "exit_code": rc,
            "minutes": round((time.perf_counter() - t0) / 60, 1),
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(dated=False),
        }
        if rc != 0 or not steps_seen:  # a run that fails is a result too: keep what it logged
            failed = {**base, "finite": False, "loss": loss, "grad_norm": grad, "log_tail": log[-3000:]}
            record("stability", name, failed)
            print(f"170M {name}: exit code {rc}, {len(steps_seen)} steps logged\n{log[-3000:]}", flush=True)
            continue
        per_step_clip = {s: statistics.mean(c[s] for c in clip.values() if s in c) for s in steps_seen}
        record("stability", name, {
            **base,
            "loss": loss,
            "grad_norm": grad,
            "clip_active_mean": per_step_clip,
            "clip_active_layers": {t.split("/")[1]: statistics.mean(c.values()) for t, c in clip.items()},
            "finite": all(math.isfinite(v) for v in [*loss.values(), *grad.values()]),
        })  # fmt: skip
        clip_mean = statistics.mean(per_step_clip.values())
        first, last = (loss[min(loss)], loss[max(loss)]) if loss else (math.nan, math.nan)
        print(f"170M {name}: loss {first:.3f} -> {last:.3f}, max grad norm {max(grad.values()):.2f}, "
              f"clip_active mean {clip_mean:.3f}", flush=True)  # fmt: skip


def verdict(defaults: list[float], setting: list[float]) -> tuple[float, bool]:
    """(difference of the means, passes): the setting passes when its mean validation loss
    is at most TOLERANCE above the defaults'. A setting that does not stay finite fails;
    defaults that do not, where the setting does, leave the setting better by any measure."""
    if not all(math.isfinite(v) for v in setting):
        return math.nan, False
    if not all(math.isfinite(v) for v in defaults):
        return -math.inf, True
    delta = statistics.mean(setting) - statistics.mean(defaults)
    return delta, round(delta, 9) <= TOLERANCE  # losses are stored rounded: 0.01 itself passes


def candidates(stored: dict) -> list[str]:
    """The settings stored besides the defaults, the long-context setting first."""
    found = {key.split("/")[1] for key in stored["quality"]} - {"defaults"}
    return sorted(found, key=lambda s: (s != "long-context", s))


def decision(stored: dict, candidate: str = "long-context") -> tuple[list[list[str]], str]:
    """One row per model (the defaults' and the candidate setting's per-seed losses,
    unpaired ones in brackets; the means over the seeds both ran; their difference) and
    the verdict: "met" or "not met" over every seed of SEEDS, "incomplete (k of n seeds)"
    before that."""
    rows, verdicts, fewest = [], [], len(SEEDS)
    pair = ("defaults", candidate)
    for name, model in MODELS.items():
        runs = {s: {seed: stored["quality"].get(f"{name}/{s}/{seed}") for seed in SEEDS} for s in pair}
        paired = [seed for seed in SEEDS if all(runs[s][seed] for s in pair)]
        fewest = min(fewest, len(paired))
        values = {s: [runs[s][seed]["val"] for seed in paired] for s in pair}
        delta, ok = verdict(values["defaults"], values[candidate]) if paired else (math.nan, False)
        verdicts.append(ok)
        cells = [
            ", ".join(
                "-" if runs[s][seed] is None else f"{runs[s][seed]['val']:.4f}" if seed in paired
                else f"({runs[s][seed]['val']:.4f})"
                for seed in SEEDS
            )
            for s in pair
        ]  # fmt: skip
        means = [f"{statistics.mean(values[s]):.4f}" if paired else "-" for s in pair]
        rows.append([model, *cells, *means, f"{delta:+.4f}" if paired else "-", str(len(paired))])
    if fewest < len(SEEDS):
        return rows, f"incomplete ({fewest} of {len(SEEDS)} seeds)"
    return rows, "met" if all(verdicts) else "not met"


def render() -> None:
    stored = load()
    seeds = ", ".join(str(seed) for seed in SEEDS)
    dates = sorted({r["date"] for r in stored["quality"].values()})
    machines = sorted({r["machine"] for r in stored["quality"].values()})
    doc = (
        f"Machine: {'; '.join(machines) or '-'}, measured {', '.join(dates) or '-'}. Command: `python -m "
        f"bench.long_context_defaults quality [--gate-scale-init G]`. Validation loss at step 400 (debugmodel, "
        f"8 x 512 tokens; the language-model table's setup), the defaults against each setting "
        f"(long-context: `forget_init = 1e-5`, `max_grad_norm = 4`); the seed sets the initialisation, the data "
        f"order is the same. Means over the seeds both ran; a value in brackets has no partner yet.\n"
    )
    for candidate in candidates(stored) or ["long-context"]:
        rows, outcome = decision(stored, candidate)
        header = ["model", f"defaults (seeds {seeds})", f"{candidate} (seeds {seeds})", "defaults mean",
                  f"{candidate} mean", "difference", "seeds paired"]  # fmt: skip
        doc += (
            f"\n{table(header, rows)}\n\nRule: the mean of {candidate} at most {TOLERANCE} above the defaults' for "
            f"both models over seeds {seeds}: **{outcome}**.\n"
        )
    stab = stored.get("stability", {})
    if stab:
        srows = []
        for setting, r in sorted(stab.items()):
            if "clip_active_mean" not in r:
                srows.append([setting, str(r["steps"]), f"no (exit code {r['exit_code']})", *["-"] * 6, r["date"]])
                continue
            loss, grad = r["loss"], r["grad_norm"]
            clip = list(r["clip_active_mean"].values())
            layers = r["clip_active_layers"]
            first, last = loss[min(loss, key=int)], loss[max(loss, key=int)]
            srows.append([
                setting, str(r["steps"]), "yes" if r["finite"] else "no", f"{first:.3f} -> {last:.3f}",
                f"{statistics.median(grad.values()):,.1f}", f"{max(grad.values()):,.1f}",
                f"{grad[max(grad, key=int)]:,.1f}",
                f"{statistics.mean(clip):.3f} ({min(layers.values()):.3f}-{max(layers.values()):.3f})",
                f"{r['minutes']:.0f}", r["date"],
            ])  # fmt: skip
        sheader = ["setting", "steps", "finite", "loss (first -> last)", "median grad norm", "max grad norm",
                   "last grad norm",
                   "clip_active mean (layer range)", "minutes", "measured"]  # fmt: skip
        doc += (
            f"\n170M shape (`python -m bench.long_context_defaults stability [--steps N]`; 1 x 1,024 "
            f"tokens a step, AdamW 4e-4 after 10 warm-up steps, fp32, embedded corpus; gradient norm before "
            f"torchtitan's clip at 1; clip_active: the fraction of tokens whose inner gradient the memory clips, "
            f"averaged over layers and steps):\n\n{table(sheader, srows)}\n\n"
            f"![gradient norm per step at the 170M shape](long-context-170m.png)\n"
        )
    publish(doc, "results.md", "long-context-defaults", True, (lambda path: plot(stab, path)) if stab else None)


def plot(stab: dict, path: str) -> None:
    """The gradient norm of every step of each 170M run, on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for setting, r in sorted(stab.items()):
        steps = sorted(r["grad_norm"], key=int)
        ax.plot([int(s) for s in steps], [r["grad_norm"][s] for s in steps], marker=".", label=setting)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm (before the clip at 1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("step", choices=["quality", "stability", "publish"])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--rerun", action="store_true", help="measure runs that are already stored again")
    p.add_argument("--steps", type=int, default=STABILITY_STEPS, help="stability: training steps at the 170M shape")
    p.add_argument("--gate-scale-init", type=float, help="start the gates' scale here (a setting of its own)")
    a = p.parse_args()
    if a.step == "quality":
        quality(a.models, a.seeds, a.settings, a.rerun, a.gate_scale_init)
    elif a.step == "stability":
        stability(a.settings, a.steps, a.gate_scale_init)
    render()


if __name__ == "__main__":
    main()
