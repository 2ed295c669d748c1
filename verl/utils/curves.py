"""Training curves of a ReBO run from its ``metrics.jsonl``: a PNG and a per-step markdown table.

    python -m verl.utils.curves log/rebo/<experiment>            # writes curves.png and curves.md beside the log

The trainer calls ``write_curves`` when a run ends; rerun it by hand on a run that is still going.
Panels: training reward (mean, ``<reject>`` and ``<normal>`` rows, with a moving average of the mean), validation
reward when present, KL to the reference and response length, and seconds per step by phase.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from verl.utils.io import atomic_savefig, atomic_write_text

PHASES = ("gen", "reward", "old_log_prob", "ref", "values", "adv", "update_critic", "update_actor", "validation",
          "save")
TABLE_KEYS = (
    ("reward", "reward/mean"),
    ("<reject>", "reward/reject_mean"),
    ("<normal>", "reward/normal_mean"),
    ("balanced", "reward/balanced_mean"),
    ("refusal", "reward/refusal"),
    ("refused <reject>", "reward/refusal_reject"),
    ("refused <normal>", "reward/refusal_normal"),
    ("KL", "actor/kl_loss"),
    ("resp len", "response_length/mean"),
    ("tok/s", "perf/rollout_tokens_per_s"),
    ("step s", "timing/step"),
)


def _jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n} is not JSON ({e.msg})") from e
    return rows


def read_metrics(path: str | Path, all_rows: list[dict] | None = None) -> list[dict]:
    """The training-step rows of a metrics.jsonl (rows holding ``reward/mean``), last row per step kept (a resumed
    run appends the steps it redoes). Adds ``reward/balanced_mean``, the mean of the ``<reject>`` and ``<normal>``
    means: unlike ``reward/mean`` it does not move with the share of each kind among a step's sampled prompts."""
    rows: dict[int, dict] = {}
    for row in _jsonl(path) if all_rows is None else all_rows:
        if "reward/mean" in row:
            rej, nor = row.get("reward/reject_mean"), row.get("reward/normal_mean")
            if rej is not None and nor is not None:
                row["reward/balanced_mean"] = (rej + nor) / 2
            rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` finite values (NaN where none yet)."""
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None and math.isfinite(v)]
        out.append(sum(part) / len(part) if part else float("nan"))
    return out


def _series(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) if key in r and r[key] is not None else float("nan") for r in rows]


def markdown_table(rows: list[dict]) -> str:
    keys = [(name, key) for name, key in TABLE_KEYS if any(key in r for r in rows)]
    lines = ["| step | " + " | ".join(n for n, _ in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        cells = [f"{r[k]:.3g}" if isinstance(r.get(k), (int, float)) else "" for _, k in keys]
        lines.append(f"| {r['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], out_png: str | Path, val_rows: list[dict] | None = None, window: int = 5) -> Path:
    import matplotlib  # optional heavy dependency: only a plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional heavy dependency (after the backend is chosen)

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    for key, label, style in (("reward/reject_mean", "<reject> rows", ":"),
                              ("reward/normal_mean", "<normal> rows", "--"),
                              ("reward/mean", "all rows", "-")):
        ax.plot(steps, _series(rows, key), style, marker=".", label=label, alpha=0.8)
    ax.plot(steps, moving_average(_series(rows, "reward/mean"), window), "k-", lw=2, label=f"all, {window}-step mean")
    if any("reward/balanced_mean" in r for r in rows):
        ax.plot(steps, moving_average(_series(rows, "reward/balanced_mean"), window), "-", color="tab:brown", lw=2,
                label=f"(<reject> + <normal>) / 2, {window}-step mean")
    vs = [v for v in (val_rows or []) if "val/reward" in v]
    if vs:
        ax.plot([v["step"] for v in vs], [v["val/reward"] for v in vs], "s-", color="tab:red",
                label="validation (greedy)")
    ax.set(xlabel="step", ylabel="reward", title="training reward")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(steps, _series(rows, "actor/kl_loss"), "-", marker=".", color="tab:purple", label="KL to reference")
    ax.set(xlabel="step", ylabel="KL", title="KL and response length")
    ax2 = ax.twinx()
    ax2.plot(steps, _series(rows, "response_length/mean"), "--", color="tab:gray", label="response tokens")
    ax2.set_ylabel("mean response tokens")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    ax = axes[2]
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        vals = [float(r.get(f"timing/{phase}", 0.0) or 0.0) for r in rows]
        if any(vals):
            ax.bar(steps, vals, bottom=bottom, label=phase)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(xlabel="step", ylabel="seconds", title="time per step by phase")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    atomic_savefig(fig, out_png, dpi=110)
    plt.close(fig)
    return out_png


def write_curves(run_dir: str | Path) -> tuple[Path, Path] | None:
    """``curves.png`` and ``curves.md`` from ``run_dir/metrics.jsonl``; None when there are no training steps yet."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: give the run folder (trainer.default_local_dir/experiment)")
    all_rows = _jsonl(metrics)
    rows = read_metrics(metrics, all_rows)
    if not rows:
        return None
    png = plot_curves(rows, run_dir / "curves.png", [r for r in all_rows if "val/reward" in r])
    md = run_dir / "curves.md"
    atomic_write_text(md, markdown_table(rows))
    return png, md


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", help="ReBO run folders holding metrics.jsonl")
    for run_dir in p.parse_args(argv).run_dirs:
        out = write_curves(run_dir)
        print(f"{run_dir}: " + (f"wrote {out[0]} and {out[1]}" if out else "no training steps yet"))


if __name__ == "__main__":
    main()
