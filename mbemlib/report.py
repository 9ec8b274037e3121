"""What a run of MBEM.py shows, from its results.json alone: the tables, the paired statistics,
the figures and the files beside results.json.

    results.csv               one row per cell
    paired.csv                per redundancy: MBEM minus each baseline, seed by seed, with a 95% t-interval
    redundancy.csv            the budget question: each algorithm at the smallest r minus itself and
                              the others at each larger r, seed by seed, with the same interval
    error_vs_redundancy.png   test error against redundancy (the paper's figure)
    mbem_minus_baselines.png  MBEM minus each baseline per redundancy, seed by seed, with its interval
    worker_accuracy.png       estimated against true per-worker accuracy, at r = 1 and the largest r

Every spread over seeds is the sample standard deviation (n - 1; none from one seed). Seeds share
their simulated workers and items across algorithms, so methods are compared seed by seed: the
difference d_s = error(MBEM, s) - error(baseline, s) for each seed s, its mean,
and the interval mean +- t_{0.975, S-1} sd(d) / sqrt(S) over the S seeds.
"""

import csv
import io
import math
import os
from collections import Counter

import numpy as np
from scipy import stats

from mbemlib import aggregation as agg
from mbemlib.aggregation import METHODS
from mbemlib.atomic import atomic_write

NAMES = METHODS  # what a table or figure calls each method
CSV_COLUMNS = ["redundancy", "n", "algorithm", "seed", "test_error", "test_error_top5", "val_error",
               "label_accuracy", "worker_accuracy_mae", "epochs", "backend", "precision", "wall_seconds",
               "train_img_per_s"]
BASELINES = ("wmv", "mv", "em", *agg.FIELD)  # MBEM is compared with each of these that a run has


# ----------------------------------------------------------------------------- a cell's measures

def top_k_error(probs, labels, k):
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(1.0 - (top == labels[:, None]).any(axis=1).mean())


def selected_val_error(history, select_epoch):
    """Validation error of the model that was tested: the final stage's best or last epoch."""
    final = [h for h in history if h["stage"] == history[-1]["stage"] and "val_acc" in h]
    if not final:
        return None
    return 1 - (max(h["val_acc"] for h in final) if select_epoch == "val" else final[-1]["val_acc"])


def worker_fields(ann, confusions, true_accuracy, item_dist=None, estimated=None):
    """Per-worker accuracy, estimated and true, for the workers who gave a label (None for the
    others), and the mean absolute error between them; all None for an algorithm without
    confusions. Simulated workers: the mean of the confusion diagonal, estimated and true. Real
    workers (item_dist, the cell's targets, given): the estimated share of their labels that are
    right, as their empirical accuracy counts (`worker_accuracy_kind` says which). `estimated`
    gives the estimates directly instead (CROWDLAB's quality scores)."""
    if confusions is None and estimated is None:
        return {"worker_accuracy_mae": None}
    active = np.bincount(ann.workers, minlength=ann.m) > 0
    if true_accuracy is None:  # real labels on images of unknown class: estimates alone
        true_accuracy = np.full(ann.m, np.nan)
    if estimated is not None:
        kind = "quality score"
    elif item_dist is None:
        estimated, kind = agg.worker_accuracy(confusions), "mean confusion diagonal"
    else:
        estimated, kind = agg.labels_right(ann, confusions, item_dist), "share of labels right"

    def listed(values):
        return [round(float(v), 5) if a and np.isfinite(v) else None for v, a in zip(values, active, strict=True)]

    error = np.abs(estimated - true_accuracy)[active]
    return {"worker_accuracy_mae": float(np.nanmean(error)) if np.isfinite(error).any() else None,
            "worker_accuracy": listed(estimated), "worker_accuracy_true": listed(true_accuracy),
            "worker_accuracy_kind": kind}


# ----------------------------------------------------------------------------- tables

def summarise(cells, metric="test_error"):
    """{algorithm: {redundancy: [metric over seeds]}} (cells without the metric are left out)."""
    table = {}
    for cell in cells:
        if cell.get(metric) is not None:
            table.setdefault(cell["algorithm"], {}).setdefault(cell["redundancy"], []).append(cell[metric])
    return table


def spread(values):
    """The sample standard deviation over seeds (n - 1), NaN for a single seed (no spread known)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def format_spread(values):
    sd = spread(values)
    return "  -  " if math.isnan(sd) else f"{sd:.3f}"


def by_cell(cells, metric="test_error"):
    """{(algorithm, redundancy, seed): metric} of the cells that have it."""
    return {(c["algorithm"], c["redundancy"], c["seed"]): c[metric] for c in cells if c.get(metric) is not None}


def compare(value, a, r_a, b, r_b):
    """difference() of value[a, r_a, s] - value[b, r_b, s] over the seeds s both have; None if none."""
    seeds = sorted(s for (x, r, s) in value if x == a and r == r_a and (b, r_b, s) in value)
    return difference(seeds, [value[a, r_a, s] - value[b, r_b, s] for s in seeds]) if seeds else None


def paired(cells, method="mbem", baseline="wmv", metric="test_error"):
    """{redundancy: difference} for every r where both were run on at least one common seed."""
    value = by_cell(cells, metric)
    out = {r: compare(value, method, r, baseline, r) for r in sorted({c["redundancy"] for c in cells})}
    return {r: d for r, d in out.items() if d is not None}


def difference(seeds, diffs):
    """Mean of per-seed differences with a 95% t-interval (none from a single seed), and wins
    (seeds where the difference is below zero: the method's error is lower)."""
    diffs = np.asarray(diffs, dtype=float)
    mean = float(diffs.mean())
    if len(diffs) > 1:
        half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs)))
        low, high = mean - half, mean + half
    else:
        low = high = None
    return {"seeds": list(seeds), "differences": diffs.tolist(), "mean": mean, "ci_low": low, "ci_high": high,
            "wins": int((diffs < 0).sum())}


def paired_rows(cells):
    """Rows of paired.csv: MBEM against each baseline that was run, at each redundancy."""
    algorithms = {c["algorithm"] for c in cells}
    rows = []
    for baseline in BASELINES:
        if "mbem" not in algorithms or baseline not in algorithms:
            continue
        for r, d in paired(cells, "mbem", baseline).items():
            rows.append({"redundancy": r, "comparison": f"mbem - {baseline}", **fields(d), "mbem_wins": d["wins"]})
    return rows


def fields(d):
    """A difference() as the columns of paired.csv and redundancy.csv."""
    return {"seeds": len(d["seeds"]), "differences": " ".join(f"{x:+.4f}" for x in d["differences"]),
            "mean": d["mean"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}


def redundancy_rows(cells):
    """Rows of redundancy.csv: is the smallest redundancy r0 the better use of the budget? For
    each algorithm a at r0 and each algorithm b at a larger r, error(a, r0) - error(b, r) seed by
    seed (the seeds share their workers, so the pairing holds across r too). Pairs: each algorithm
    against itself (clean against clean is the pure cost of fewer items), and MBEM at r0 against
    every crowd-label algorithm at r (the paper's claim: label once and bootstrap, rather than
    label r times)."""
    rs = sorted({c["redundancy"] for c in cells})
    algorithms = list(dict.fromkeys(c["algorithm"] for c in cells))
    value = by_cell(cells)
    rows = []
    for r in rs[1:]:
        for a in algorithms:
            for b in algorithms:
                if (a == b or (a == "mbem" and b != "clean")) and (d := compare(value, a, rs[0], b, r)):
                    rows.append({"comparison": f"{a} r={rs[0]} - {b} r={r}", **fields(d), "smaller_r_wins": d["wins"]})
    return rows


def worker_rows(cells):
    """Per algorithm and redundancy, estimated against true (simulated) or empirical (real) worker
    accuracy, pooled over seeds: points (workers with a label, over all seeds), the two means,
    mean absolute error, Pearson correlation (none when either side is constant, as the majority
    vote's estimates are at r = 1)."""
    rows = []
    for algorithm in dict.fromkeys(c["algorithm"] for c in cells if c.get("worker_accuracy")):
        for r in sorted({c["redundancy"] for c in cells if c["algorithm"] == algorithm}):
            est, true = worker_points(cells, algorithm, r)
            if len(est):
                rows.append({"algorithm": algorithm, "redundancy": r, "points": len(est),
                             "mean_estimate": float(est.mean()), "mean_true": float(true.mean()),
                             **agreement(est, true)})
    return rows


def agreement(est, true):
    """Mean absolute error and Pearson correlation of estimated against true accuracies (no
    correlation when either side is constant)."""
    varies = len(est) > 1 and est.std() > 0 and true.std() > 0
    return {"mae": float(np.abs(est - true).mean()) if len(est) else float("nan"),
            "correlation": float(np.corrcoef(est, true)[0, 1]) if varies else None}


def write_csv(path, rows, columns):
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, text.getvalue().encode())


def worker_points(cells, algorithm, r):
    """(estimated, true) per-worker accuracies of one algorithm at redundancy r, pooled over seeds,
    workers with no label left out."""
    est, true = [], []
    for cell in cells:
        if cell["algorithm"] == algorithm and cell["redundancy"] == r and cell.get("worker_accuracy"):
            pairs = [(e, t) for e, t in zip(cell["worker_accuracy"], cell["worker_accuracy_true"], strict=True)
                     if e is not None and t is not None]
            est += [e for e, _ in pairs]
            true += [t for _, t in pairs]
    return np.array(est), np.array(true)


def title(config, cells):
    """The figures' title: data, workers, network, and the seeds the cells hold (of those planned,
    when a run is unfinished: a figure must not claim seeds it has not run)."""
    source = config.get("annotations") or config.get("source")
    name = os.path.basename(source).split(".")[0] if source else config["dataset"]
    done, planned = len({c["seed"] for c in cells}), len(config["seeds"])
    seeds = f"{done} of {planned} seeds" if done < planned else f"{done} seed{'s' * (done != 1)}"
    workers = "real workers" if config.get("annotations") else \
        f"{config['workers']} {config['worker_model']} workers, gamma {config['gamma']}"
    return f"{name}: {workers}\nResNet-{config['depth']}, {config['epochs']} epochs, {seeds}"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error(results, out):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    top5 = summarise(results["cells"], "test_error_top5")
    table = summarise(results["cells"])
    single = all(len(values) == 1 for by_r in table.values() for values in by_r.values())
    for i, (algorithm, by_r) in enumerate(table.items()):
        rs = sorted(by_r)
        color = f"C{i}"
        # each method a little to the side of r, so that equal points (MV, WMV and EM share one model
        # at r = 1) stay visible side by side
        x = np.array(rs, dtype=float) + 0.06 * (i - (len(table) - 1) / 2)
        sd = [0.0 if math.isnan(s) else s for s in (spread(by_r[r]) for r in rs)]  # one seed: no bar
        ax.errorbar(x, [np.mean(by_r[r]) for r in rs], yerr=sd, marker="o", capsize=3,
                    color=color, linestyle="--" if top5 else "-", label=NAMES.get(algorithm, algorithm))
        if algorithm in top5:  # the paper's ImageNet figure: solid top-5, dashed top-1
            ax.plot(x, [np.mean(top5[algorithm][r]) for r in rs], marker="s", color=color)
    ax.set_xticks(sorted({cell["redundancy"] for cell in results["cells"]}))
    budget = results["config"].get("budget")
    ax.set_xlabel(f"redundancy r (labels per item), fixed budget{f' of {budget:,} labels' if budget else ''}")
    ax.set_ylabel("test error (top-1 dashed, top-5 solid)" if top5 else "test error (top-1)")
    ax.set_title(title(results["config"], results["cells"]) + (" (one seed)" if single else " (mean and sample std)"),
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "error_vs_redundancy.png"), dpi=120)
    plt.close(fig)


def plot_worker_accuracy(results, out):
    """One panel per estimator with confusions (WMV, EM, MBEM), a row each for r = 1 and the
    largest r: estimated against true per-worker accuracy, the diagonal drawn."""
    cells = results["cells"]
    algorithms = [a for a in ("wmv", "em", "mbem") if any(c["algorithm"] == a and c.get("worker_accuracy")
                                                             for c in cells)]
    rs = sorted({c["redundancy"] for c in cells if c.get("worker_accuracy")})
    if not algorithms or not rs:
        return False
    rows = sorted({rs[0], rs[-1]})
    config = results["config"]
    hammer_spammer = config.get("worker_model") == "hammer-spammer" and not config.get("annotations")
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(algorithms), figsize=(3 * len(algorithms), 3 * len(rows)),
                             squeeze=False, sharex=True, sharey=True)
    for i, r in enumerate(rows):
        for j, algorithm in enumerate(algorithms):
            ax = axes[i][j]
            est, true = worker_points(cells, algorithm, r)
            ax.plot([0, 1], [0, 1], color="0.6", linewidth=1)
            ax.scatter(true, est, s=8, alpha=0.5)
            if hammer_spammer and len(true):  # the two clusters of true accuracy, named
                ax.annotate("hammers", (max(true), 0.02), ha="right", fontsize=7, color="0.4")
                ax.annotate("spammers\n(chance)", (min(true) + 0.02, 0.02), fontsize=7, color="0.4")
            fit = agreement(est, true)
            corr = "" if fit["correlation"] is None else f", correlation {fit['correlation']:.2f}"
            ax.set_title(f"{NAMES[algorithm]}, r = {r}\nmean abs error {fit['mae']:.3f}{corr}", fontsize=8)
            ax.set_xlim(-0.02, 1.02)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if i == len(rows) - 1:
                ax.set_xlabel("true accuracy" if not results["config"].get("annotations") else "empirical accuracy")
            if j == 0:
                ax.set_ylabel("estimated accuracy")
    fig.suptitle(title(results["config"], results["cells"]).replace("\n", "; "), fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "worker_accuracy.png"), dpi=120)
    plt.close(fig)
    return True


def format_difference(row, winner, wins):
    interval = "" if row["ci_low"] is None else f" 95% CI [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
    return f"mean {row['mean']:+.4f}{interval} {winner} won {wins} of {row['seeds']} ({row['differences']})"


def format_paired(rows):
    head = "\npaired test-error differences, seed by seed (negative: MBEM lower)"
    return "\n".join([head] + [f"r={row['redundancy']:<3} {row['comparison']:<11} "
                               f"{format_difference(row, 'MBEM', row['mbem_wins'])}" for row in rows])


def format_redundancy(rows):
    head = "\nthe budget: smaller r minus larger r, test error seed by seed (negative: the smaller r lower)"
    return "\n".join([head] + [f"{row['comparison']:<22} {format_difference(row, 'smaller r', row['smaller_r_wins'])}"
                               for row in rows])


def format_workers(rows, real):
    truth = "empirical" if real else "true"
    lines = [f"\nworker accuracy, estimated against {truth}, pooled over seeds (a point: a worker in a seed)",
             f"{'algorithm':<10}{'r':>4}{'points':>9}{'estimate':>10}{truth:>11}{'abs error':>11}{'corr':>7}"]
    for row in rows:
        corr = "-" if row["correlation"] is None else f"{row['correlation']:.2f}"
        lines.append(f"{row['algorithm']:<10}{row['redundancy']:>4}{row['points']:>9}{row['mean_estimate']:>10.3f}"
                     f"{row['mean_true']:>11.3f}{row['mae']:>11.3f}{corr:>7}")
    return "\n".join(lines)


def format_table(results):
    """Mean (and spread, over seeds) of test error, label accuracy and worker-accuracy error."""
    lines = []
    for metric in ("test_error", "test_error_top5", "label_accuracy", "worker_accuracy_mae"):
        table = summarise(results["cells"], metric)
        if not table:
            continue
        rs = sorted({r for by_r in table.values() for r in by_r})
        single = all(len(values) == 1 for by_r in table.values() for values in by_r.values())
        what = "one seed" if single else "mean +- sample std over seeds"
        lines += [f"\n{metric}, {what}", " " * 22 + "".join(f"r={r:<13}" for r in rs)]
        for algorithm, by_r in table.items():
            lines.append(f"{algorithm:<22}" + "".join(
                " " * 15 if r not in by_r else f"{by_r[r][0]:.3f}{' ' * 10}" if single else
                f"{np.mean(by_r[r]):.3f} +- {format_spread(by_r[r])}  " for r in rs))
    return "\n".join(lines)


def trained_with(cells):
    """How the cells' models were trained, e.g. "torch fp32: 5 cells". A run resumed on another
    machine can mix these (precision "auto" is bf16 only where the CPU or GPU computes it)."""
    counts = Counter(f"{cell.get('backend', '?')} {cell.get('precision', '?')}" for cell in cells)
    mixed = "  (mixed: compare cells of one kind)" if len(counts) > 1 else ""
    return "trained with " + ", ".join(f"{k}: {v} cell{'s' * (v > 1)}" for k, v in sorted(counts.items())) + mixed


def report(results, out):
    """Write every file above from `results` and print the tables and paired differences."""
    write_csv(os.path.join(out, "results.csv"), results["cells"], CSV_COLUMNS)
    rows = paired_rows(results["cells"])
    write_csv(os.path.join(out, "paired.csv"), rows, ["redundancy", "comparison", "seeds", "differences", "mean",
                                                      "ci_low", "ci_high", "mbem_wins"])
    budget = redundancy_rows(results["cells"])
    if budget:
        write_csv(os.path.join(out, "redundancy.csv"), budget, ["comparison", "seeds", "differences", "mean",
                                                                "ci_low", "ci_high", "smaller_r_wins"])
    plot_error(results, out)
    plot_paired(results, out)
    plot_worker_accuracy(results, out)
    print(trained_with(results["cells"]))
    print(format_table(results))
    if rows:
        print(format_paired(rows))
    if budget:
        print(format_redundancy(budget))
    workers = worker_rows(results["cells"])
    if workers:
        print(format_workers(workers, bool(results["config"].get("annotations"))))


def shared_models(cells, r, algorithms):
    """Groups of `algorithms` whose test errors at redundancy r are equal seed by seed: they trained
    one model (identical targets: MV, WMV and label-only EM at r = 1)."""
    value, groups = by_cell(cells), []
    for a in algorithms:
        seeds = {s for (x, rr, s) in value if x == a and rr == r}
        for group in groups:
            b = group[0]
            if seeds and seeds == {s for (x, rr, s) in value if x == b and rr == r} and \
                    all(value[a, r, s] == value[b, r, s] for s in seeds):
                group.append(a)
                break
        else:
            groups.append([a])
    return [g for g in groups if len(g) > 1]


def plot_paired(results, out):
    """MBEM minus each baseline at each redundancy: the mean of the seed-by-seed differences and
    its 95% t-interval (below zero, MBEM's error is lower: the paper's claim at a glance). Where
    baselines trained one shared model, the figure says so."""
    cells, rows = results["cells"], paired_rows(results["cells"])
    if not rows:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    baselines = [b for b in BASELINES if any(row["comparison"] == f"mbem - {b}" for row in rows)]
    rs = sorted({row["redundancy"] for row in rows})
    step = 0.08 * (max(rs) - min(rs) or 1)
    for j, baseline in enumerate(baselines):
        mine = [row for row in rows if row["comparison"] == f"mbem - {baseline}"]
        x = [row["redundancy"] + (j - (len(baselines) - 1) / 2) * step for row in mine]
        y = [row["mean"] for row in mine]
        err = [[0 if row["ci_low"] is None else row["mean"] - row["ci_low"] for row in mine],
               [0 if row["ci_high"] is None else row["ci_high"] - row["mean"] for row in mine]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, linestyle="none", color=f"C{j}",
                    label=f"MBEM - {NAMES[baseline]}")
    shared = [f"r = {r}: " + " = ".join(NAMES[a] for a in group) + ", one model (identical targets)"
              for r in rs for group in shared_models(cells, r, baselines)]
    ax.axhline(0, color="0.5", linewidth=1)
    ax.set_xticks(rs)
    ax.set_xlabel("redundancy r (labels per item), fixed budget")
    ax.set_ylabel("MBEM minus baseline, test error (< 0: MBEM lower)")
    ax.set_title(title(results["config"], cells) + " (mean and 95% t-interval)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.5, 0.01, "\n".join(shared), ha="center", va="bottom", fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.035 * len(shared), 1, 1))
    fig.savefig(os.path.join(out, "mbem_minus_baselines.png"), dpi=120)
    plt.close(fig)
    return True
