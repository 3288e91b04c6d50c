"""Needle-curve tables and plot (bench/needle_curve.py publishes them): each cell as
exact % / characters % (samples), the cells split by needle kind and depth, the repeated
filler's cells, the memory heads' half-lives, and accuracy against context length."""

import statistics

from bench.common import table
from titans_plugin.evals.needles import KINDS


def filler_table(cells: dict, names) -> str:
    """The cells asked with the repeated filler passage as the haystack (--haystack repeat)."""
    filler = {k: r for k, r in cells.items() if r.get("haystack") == "repeat"}
    lengths = sorted({r["length"] for r in filler.values() if r["name"] in names})
    rows = [[n] + [cell_text(filler.get(cell_key(n, L, "repeat"))) for L in lengths] for n in names]
    rows = [row for row in rows if any(c != "-" for c in row[1:])]
    if not rows:
        return ""
    header = ["model"] + [f"{L:,} tokens" for L in lengths]
    intro = (
        "The same needles in a haystack of one passage repeated (the passkey task's noise, `python -m "
        "bench.needle_curve evaluate --haystack repeat`), exact % / characters % (samples):"
    )
    return f"\n{intro}\n\n{table(header, rows)}\n"


def forgetting_table(forgetting: dict, names) -> str:
    """Each memory model's heads' half-lives (`forgetting` step), as quantiles."""
    rows = []
    for n in names:
        r = forgetting.get(n)
        if r is None:
            continue
        lives = sorted(r["half_lives"])
        longer = sum(h > r["tokens"] for h in lives)
        cells = [f"{h:,.0f}" for h in (lives[0], statistics.median(lives), lives[-1])]
        rows.append([n, len(lives), *cells, f"{longer} of {len(lives)}"])
    if not rows:
        return ""
    tokens = next(iter(forgetting.values()))["tokens"]
    header = ["model", "memory heads", "shortest", "median", "longest", f"longer than {tokens:,}"]
    intro = (
        f"The memory heads' half-lives in tokens by forgetting alone (`python -m bench.needle_curve forgetting`: "
        f"ln 2 over the mean of -log(1 - alpha) while reading {tokens:,} tokens of held-out stories):"
    )
    return f"\n{intro}\n\n{table(header, rows)}\n"


def breakdown(results: dict, names, lengths, field: str, groups, score: str) -> list[list[str]]:
    """Rows of a model's cells split by a recorded per-sample field (`kinds`, `depths`):
    per group, the % of `score` (`hits` or `characters`), "-" where none was recorded."""
    rows = []
    for n in names:
        cells = [results.get(f"{n}@{length}") for length in lengths]
        if not any(r and field in r for r in cells):
            continue
        row = [n]
        for r in cells:
            if not (r and field in r):
                row.append("-")
                continue
            pct = []
            for group in groups:
                values = [v for v, g in zip(r[score], r[field], strict=True) if g == group]
                pct.append(f"{100 * sum(values) / len(values):.0f}" if values else "-")
            row.append(" / ".join(pct))
        rows.append(row)
    return rows


def by_kind(results: dict, names, lengths, depths_asked) -> str:
    """Exact match per needle kind, and characters right per depth, for the cells that
    recorded each sample's kind and depth: does a model fail on every kind, or only on the
    long values; does it fail with the needle's distance, or with the document's length?"""
    header = ["model"] + [f"{length:,} tokens" for length in lengths]
    text = ""
    kinds = breakdown(results, names, lengths, "kinds", KINDS, "hits")
    if kinds:
        intro = f"Exact match % by needle kind ({' / '.join(KINDS)}), where each sample's kind was recorded:"
        text += f"\n{intro}\n\n{table(header, kinds)}\n"
    depths = breakdown(results, names, lengths, "depths", depths_asked, "characters")
    if depths:
        order = " / ".join(f"{d:.0%}" for d in depths_asked)
        intro = (
            f"Characters right % by the needle's depth in the haystack ({order}; 90% is nearest the question), "
            "where each sample's depth was recorded:"
        )
        text += f"\n{intro}\n\n{table(header, depths)}\n"
    return text


def curriculum_text(facts: dict) -> str:
    fraction = facts.get("curriculum", 0.0)
    return f", documents growing over the first {fraction:.0%} of the steps" if fraction else ""


def summary(r: dict) -> tuple[float, float | None, int]:
    """exact-match %, characters-right % (None if not measured) and the sample count of one
    cell: from its per-sample lists, or from the counts of a cell stored without them."""
    if "hits" in r:
        chars = r.get("characters")
        return 100 * sum(r["hits"]) / len(r["hits"]), 100 * sum(chars) / len(chars) if chars else None, len(r["hits"])
    return 100 * r["exact"] / r["samples"], r.get("characters_pct"), r["samples"]


def cell_text(r: dict | None) -> str:
    """exact % / characters % (samples)."""
    if r is None:
        return "-"
    exact, chars, n = summary(r)
    return f"{exact:.0f}{'' if chars is None else f' / {chars:.0f}'} ({n})"


def plot(results: dict, names, lengths, train_lens: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4))
    for n in names:
        pts = [(L, results[f"{n}@{L}"]) for L in lengths if f"{n}@{L}" in results]
        if not pts:
            continue
        xs = [L for L, _ in pts]
        (line,) = ax.plot(xs, [summary(r)[0] for _, r in pts], marker="o", label=n)
        chars = [(L, c) for L, r in pts if (c := summary(r)[1]) is not None]
        if chars:  # partial credit, dashed, in the model's colour
            xs, ys = [L for L, _ in chars], [c for _, c in chars]
            ax.plot(xs, ys, ls="--", marker=".", color=line.get_color(), alpha=0.7)
    for train_len in train_lens:
        ax.axvline(train_len, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{L >> 20}M" if L >= 2**20 else f"{L >> 10}K" if L >= 1024 else str(L) for L in lengths])
    lens = ", ".join(f"{n:,}" for n in train_lens)
    ax.set_xlabel(f"context length (tokens); dotted: training length{'s' if len(train_lens) > 1 else ''} {lens}")
    ax.set_ylabel("needle exact match % (dashed: characters right %)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside: lines fill the plot
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cell_key(name: str, length: int, haystack: str = "stories") -> str:
    """Where a cell is stored: the stories' cells as name@length, the others with their haystack."""
    return f"{name}@{length}" + ("" if haystack == "stories" else f"/{haystack}")
