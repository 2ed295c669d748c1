"""Forget-vs-retain Pareto frontier, its AUC above a retain threshold, and the PNG plot.

Axes follow RULE's trade-off figure: x = forget efficacy (100 - forget "All" score, higher = more forgotten),
y = retain (neighbor "All" score), both in table units (0-100). Both axes are "higher is better".

AUC above a retain threshold T (this project's definition, stated here because the number depends on it):
the area of the region {(x, y): 0 <= x <= x_max, T <= y <= y_max} that is weakly dominated by some point
(i.e. some point has x_i >= x and y_i >= y), divided by the area of the whole band x_max * (y_max - T).
It is the hypervolume of the frontier with reference point (0, T), normalised to [0, 1]: 1 = a point at
(x_max, y_max), 0 = no point keeps retain above T. Points below T contribute nothing.

With several seeds the points are seed means: the frontier and the AUC are computed on them, and each point carries
error bars on both axes (the 95% intervals over seeds), so a frontier decided within the bars is visibly so.
"""

from __future__ import annotations

import math
from pathlib import Path


def pareto_frontier(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (maximising both coordinates), sorted by x ascending.

    A point is dominated when another is >= in both coordinates and > in at least one. Duplicates all stay.
    """
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any((xj >= x and yj >= y) and (xj > x or yj > y) for j, (xj, yj) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: (points[i][0], -points[i][1]))


def pareto_auc(
    points: list[tuple[float, float]], threshold: float = 0.0, x_max: float = 100.0, y_max: float = 100.0
) -> float:
    """Normalised area dominated by ``points`` inside [0, x_max] x [threshold, y_max] (see module doc)."""
    if not y_max > threshold:
        raise ValueError(f"retain threshold {threshold} must be below y_max {y_max}")
    clipped = [(min(max(x, 0.0), x_max), min(y, y_max)) for x, y in points if not (math.isnan(x) or math.isnan(y))]
    front = [clipped[i] for i in pareto_frontier(clipped)]  # x ascending, so y descending
    area, prev_x = 0.0, 0.0
    for x, y in front:
        # on (prev_x, x] the best retain among points further right is this point's y
        if x > prev_x and y > threshold:
            area += (x - prev_x) * (y - threshold)
        prev_x = max(prev_x, x)
    return area / (x_max * (y_max - threshold))


def plot_pareto(
    points: dict[str, tuple[float, float]],
    out_png: str | Path,
    threshold: float = 0.0,
    title: str = "",
    xlabel: str = "Forget efficacy (100 - forget All)",
    ylabel: str = "Retain (neighbor All)",
    errors: dict[str, tuple[float | None, float | None]] | None = None,
) -> dict:
    """Scatter one point per method, draw the frontier staircase and the threshold; write a PNG atomically.
    ``errors``: {method: (x half-width, y half-width)} drawn as error bars (None: no bar on that axis); they change
    neither the frontier nor the AUC, which use the points.

    Returns {"threshold", "auc_frontier", "auc_by_method", "frontier": [methods], "points": {method: [x, y]},
    "intervals": {method: [x half-width, y half-width]} (with ``errors``)}.
    """
    import matplotlib  # optional heavy dependency: only a plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional heavy dependency (after the backend is chosen)

    names = list(points)
    coords = [tuple(map(float, points[n])) for n in names]
    front_idx = pareto_frontier(coords)
    summary = {
        "threshold": threshold,
        "auc_frontier": pareto_auc(coords, threshold) if coords else 0.0,
        "auc_by_method": {n: pareto_auc([c], threshold) for n, c in zip(names, coords)},
        "frontier": [names[i] for i in front_idx],
        "points": {n: list(c) for n, c in zip(names, coords)},
    }
    if errors:
        summary["intervals"] = {n: list(errors.get(n, (None, None))) for n in names}

    fig, ax = plt.subplots(figsize=(8.4, 4.8), dpi=120)
    markers = "osD^v<>pXh*"
    for k, (n, (x, y)) in enumerate(zip(names, coords)):
        label = f"{n} (AUC {summary['auc_by_method'][n]:.3f})"
        dots = ax.scatter([x], [y], marker=markers[k % len(markers)], s=55, zorder=3, label=label)
        xerr, yerr = (errors or {}).get(n, (None, None))
        if xerr is not None or yerr is not None:
            ax.errorbar([x], [y], xerr=None if xerr is None else [xerr], yerr=None if yerr is None else [yerr],
                        fmt="none", ecolor=dots.get_facecolor()[0], elinewidth=1.0, capsize=3, zorder=2.5)
    if front_idx:
        fx = [coords[i][0] for i in front_idx]
        fy = [coords[i][1] for i in front_idx]
        # staircase of the dominated region: from the y-axis at the first point's height, step down
        sx, sy = [0.0], [fy[0]]
        for i in range(len(fx)):
            sx += [fx[i], fx[i]]
            sy += [fy[i], fy[i + 1] if i + 1 < len(fy) else threshold]
        ax.plot(sx, sy, "k--", lw=1.0, zorder=2, label="Pareto frontier")
    ax.axhline(threshold, color="grey", lw=0.8, ls=":")
    ax.text(
        0.02,
        0.03,
        f"AUC(retain >= {threshold:g}) = {summary['auc_frontier']:.3f}" + (" (on the means)" if errors else ""),
        transform=ax.transAxes,
        fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
    )
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # outside: no overlap
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(out_png)
    return summary
