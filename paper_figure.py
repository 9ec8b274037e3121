"""The paper's figure, all four panels: MV, WMV, label-only EM and MBEM on CIFAR-10 beside the
paper's own ImageNet curves, and the paper's three claims judged panel by panel.

    python paper_figure.py            # the four results folders below and ../shared's CSV
    python paper_figure.py A B --paper imagenet-figure.csv --out results/paper-figure.png

The release plotted four settings (its files 2_hs, 2_chs, 6_hs, 6_chs): hammer-spammer and
class-wise hammer-spammer workers, each with gamma 0.2 and 0.6. Each results folder given is one
panel, found by its config's worker model and gamma; a panel without a folder is drawn empty and
says so, and a folder still running shows the seeds it has. Top row: ours, top-1 test error, the
mean and 95% t-interval over seeds. Bottom row: the paper's ImageNet top-1 error as read from the
release's plots (no label-only EM there). A different dataset and network: compare the shapes
(does every method's error rise with r, is MBEM lowest at every r, how large is its lead), not
the levels.

MBEM with a corrected M-step (--mbem-step one-coin or per-class-coin, beyond the paper:
docs/worker-estimates.md) is drawn dashed in its panel from the folders that hold it (--corrected;
by default those in the queue, with the default panels); the claims are the release's MBEM's.

Writes the figure and, beside it, a CSV of every plotted point; prints per panel the shapes and
the three claims, then the verdicts as one Markdown table (each with the difference nearest to
refuting it):
  1. MBEM's error is below MV's and WMV's at every r (seed by seed, 95% t-interval);
  2. every method's best redundancy is 1 (each at r = 1 minus itself at each larger r);
  3. at r = 1 label-only EM cannot estimate the workers and MBEM can (the mean absolute error of
     the per-worker accuracy estimates, MBEM minus EM seed by seed).
"""

import argparse
import csv
import json
import os

import numpy as np

from mbemlib import report
from mbemlib.cli import InputError, Parser, output_problem

PANELS = [("hammer-spammer", 0.2), ("class-wise", 0.2), ("hammer-spammer", 0.6), ("class-wise", 0.6)]
RELEASE_FILE = {("hammer-spammer", 0.2): "2_hs", ("class-wise", 0.2): "2_chs",
                ("hammer-spammer", 0.6): "6_hs", ("class-wise", 0.6): "6_chs"}
FOLDERS = ["results/cpu", "results/class-wise-gamma0.2", "results/hammer-spammer-gamma0.6",
           "results/class-wise-gamma0.6"]
PAPER_CSV = "../shared/data/paper-figure/imagenet-figure.csv"
ALGORITHMS = ("mv", "wmv", "em", "mbem")
COLOR = {a: f"C{i}" for i, a in enumerate(ALGORITHMS)}
PANEL_KEYS = {"worker_model", "gamma", "out"}  # what may differ between the panels' configs
# MBEM with a corrected M-step (--mbem-step, beyond the paper: docs/worker-estimates.md), drawn
# dashed beside each panel's MBEM; what else such a folder may set apart from its panel's
CORRECTED = ["results/cpu-one-coin", "results/cpu-one-coin-r3", "results/cpu-per-class-coin",
             "results/class-wise-gamma0.2-per-class-coin", "results/class-wise-gamma0.6-per-class-coin",
             "results/hammer-spammer-gamma0.6-one-coin"]
STEP_KEYS = PANEL_KEYS | {"mbem_step", "algorithms", "redundancy", "plan", "precision", "gpus"}
STEP_MARKER = {"one-coin": "v", "per-class-coin": "^"}


# ----------------------------------------------------------------------------- reading

def load(folder):
    """A folder's results.json, or one line saying it has none."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        raise InputError(f"{folder}: no results.json (run MBEM.py with --out {folder} first)")
    with open(path) as f:
        return json.load(f)


def panel_of(results):
    """(worker_model, gamma) of a run."""
    return results["config"]["worker_model"], float(results["config"]["gamma"])


def read_panels(folders):
    """{(worker_model, gamma): results} from each folder's results.json; one line for a folder that
    is missing, holds no run, or repeats a panel."""
    panels = {}
    for folder in folders:
        results = load(folder)
        key = panel_of(results)
        if key not in RELEASE_FILE:
            raise InputError(f"{folder}: {key[0]} workers with gamma {key[1]} are not one of the paper's four panels")
        if key in panels:
            raise InputError(f"{folder}: a second folder for {key[0]}, gamma {key[1]}")
        panels[key] = results
    return panels


def read_corrected(folders, panels):
    """{(worker_model, gamma): {step: {r: {seed: MBEM's test error}}}} from folders of MBEM cells
    with a corrected M-step, those of one panel and step pooled (one folder per r is how they are
    made); one line for a folder that is missing, uses the release's step, has no panel here or
    was run with another protocol than its panel's."""
    corrected = {}
    for folder in folders:
        results = load(folder)
        config = results["config"]
        key, step = panel_of(results), config.get("mbem_step") or "release"
        if step == "release":
            raise InputError(f"{folder}: its MBEM uses the release's M-step; give it as a panel instead")
        if key not in panels:
            raise InputError(f"{folder}: no panel here for {key[0]} workers with gamma {key[1]}")
        panel = panels[key]
        if differ := sorted(k for k in set(config) & set(panel["config"])  # a setting added since is its default
                            if k not in STEP_KEYS and config[k] != panel["config"][k]):
            raise InputError(f"{folder}: run with another {', '.join(differ)} than {panel['config']['out']}")
        if precision_of(results) != precision_of(panel):
            raise InputError(f"{folder}: trained in {precision_of(results)}, its panel in {precision_of(panel)}")
        by_r = corrected.setdefault(key, {}).setdefault(step, {})
        for c in results["cells"]:
            if c["algorithm"] == "mbem":
                by_r.setdefault(c["redundancy"], {})[c["seed"]] = c["test_error"]
    return corrected


def protocol_differences(panels):
    """The settings, other than the workers, in which the panels' runs differ (they should not).
    A setting one folder's config lacks was added after it was made, so it ran at the default and is
    not compared; the precision is the cells' (a config may say auto), and no GPUs is no GPUs."""
    configs = [{k: (v or None) if k == "gpus" else v for k, v in r["config"].items()
                if k not in PANEL_KEYS | {"precision"}} for r in panels.values()]
    shared = set.intersection(*(set(c) for c in configs)) if configs else set()
    differ = {k for k in shared if any(c[k] != configs[0][k] for c in configs[1:])}
    if len({precision_of(r) for r in panels.values()}) > 1:
        differ.add("precision")
    return sorted(differ)


def read_paper(path, metric="top-1"):
    """{(worker_model, gamma): {algorithm: {r: error}}} of one metric from the shared CSV."""
    paper = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["metric"] == metric:
                panel = paper.setdefault((row["worker_model"], float(row["gamma"])), {})
                panel.setdefault(row["algorithm"], {})[int(row["redundancy"])] = float(row["test_error"])
    return paper


# ----------------------------------------------------------------------------- measures

def interval(values):
    """(mean, low, high): the 95% t-interval of the mean over seeds; no interval from one seed."""
    d = report.difference(range(len(values)), values)
    return d["mean"], d["ci_low"], d["ci_high"]


def means(cells, metric="test_error"):
    """{algorithm: {r: mean over seeds}}."""
    return {a: {r: float(np.mean(v)) for r, v in by_r.items()} for a, by_r in report.summarise(cells, metric).items()}


def shape(curves):
    """The shape of a panel's curves {algorithm: {r: error}}: each method's best r, the r where
    MBEM is below MV and WMV (the paper's panels have no label-only EM), and MBEM's lead over MV
    and WMV (their error minus MBEM's) at the smallest r."""
    rs = sorted({r for by_r in curves.values() for r in by_r})
    best = {a: min(by_r, key=by_r.get) for a, by_r in curves.items()}
    lowest = [r for r in rs if "mbem" in curves and r in curves["mbem"]
              and all(curves[b][r] >= curves["mbem"][r] for b in ("mv", "wmv") if b in curves and r in curves[b])]
    lead = {b: curves[b][rs[0]] - curves["mbem"][rs[0]] for b in ("mv", "wmv")
            if rs and b in curves and "mbem" in curves and rs[0] in curves[b] and rs[0] in curves["mbem"]}
    return {"rs": rs, "best_r": best, "mbem_lowest_at": lowest, "lead_at_smallest_r": lead}


def verdict(diffs):
    """Do all these differences (report.difference dicts; negative: the claim holds) agree with
    the claim? 'yes' when every 95% interval lies below zero, 'in sign only' when every mean does
    but an interval reaches zero (or one seed gives none), else 'no' with how many are against."""
    if not diffs:
        return "not run"
    if against := sum(d["mean"] >= 0 for d in diffs):
        return f"no ({against} of {len(diffs)} mean differences at or above 0)"
    if all(d["ci_high"] is not None and d["ci_high"] < 0 for d in diffs):
        return "yes (every 95% interval below 0)"
    return "in sign only (every mean below 0, not every 95% interval)"


def claims(cells):
    """The paper's three claims on one panel's cells: {claim: (verdict, [(label, difference)])}."""
    rs = sorted({c["redundancy"] for c in cells})
    value, mae = report.by_cell(cells), report.by_cell(cells, "worker_accuracy_mae")
    below = [(f"MBEM - {b.upper()} r={r}", d) for b in ("mv", "wmv") for r in rs
             if (d := report.compare(value, "mbem", r, b, r))]
    budget = [(f"{a} r={rs[0]} - {a} r={r}", d) for a in ALGORITHMS for r in rs[1:]
              if (d := report.compare(value, a, rs[0], a, r))]
    workers = [(f"worker MAE MBEM - EM r={rs[0]}", d) for d in [report.compare(mae, "mbem", rs[0], "em", rs[0])] if d] \
        if rs else []
    return {"1. MBEM below MV and WMV at every r": (verdict([d for _, d in below]), below),
            "2. every method's best r is 1": (verdict([d for _, d in budget]), budget),
            "3. at r = 1 MBEM estimates workers, label-only EM cannot": (verdict([d for _, d in workers]), workers)}


# ----------------------------------------------------------------------------- what it prints and writes

def format_shape(name, s):
    best = ", ".join(f"{a} {r}" for a, r in s["best_r"].items())
    lowest = ",".join(map(str, s["mbem_lowest_at"])) or "none"
    lead = ", ".join(f"{b.upper()} {v:+.3f}" for b, v in s["lead_at_smallest_r"].items())
    return (f"  {name:<15} best r: {best:<34} MBEM below MV, WMV at r = {lowest:<12} MBEM's lead at r = "
            f"{s['rs'][0]}: {lead}")


def format_difference(label, d):
    ci = "" if d["ci_low"] is None else f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
    return f"      {label:<26} {d['mean']:+.4f}{ci}  {d['wins']} of {len(d['seeds'])} seeds"


def step_points(by_r):
    """{r: (mean, 95% low, high, seeds)} of one corrected step's MBEM errors {r: {seed: error}}."""
    return {r: (*interval([by_seed[s] for s in sorted(by_seed)]), len(by_seed)) for r, by_seed in sorted(by_r.items())}


def format_steps(steps):
    """One line for a panel's MBEM with corrected M-steps, or none."""
    parts = [f"{step}: " + ", ".join(f"r={r} {m:.4f} ({k} seed{'s' * (k > 1)})" for r, (m, _, _, k) in
                                     step_points(by_r).items()) for step, by_r in steps.items()]
    return [f"  MBEM with a corrected M-step (beyond the paper): {'; '.join(parts)}"] if parts else []


def format_panel(key, results, paper_curves, steps=None):
    head = f"\n{key[0]} workers, gamma {key[1]} (the release's {RELEASE_FILE[key]})"
    if results is None:
        return head + ": no results folder"
    cells = results["cells"]
    seeds = sorted({c["seed"] for c in cells})
    lines = [head + f": {results['config']['out']}, {len(cells)} cells, seeds {','.join(map(str, seeds))} "
                    f"of {','.join(map(str, results['config']['seeds']))}"]
    if paper_curves:
        lines.append(format_shape("ImageNet paper", shape(paper_curves)))
    if cells:
        lines.append(format_shape("CIFAR-10 ours", shape(means(cells))))
    for claim, (answer, diffs) in claims(cells).items():
        lines.append(f"  claim {claim}: {answer}")
        lines += [format_difference(label, d) for label, d in diffs]
    return "\n".join(lines + format_steps(steps or {}))


def precision_of(results):
    """The precision its cells trained in ('bf16', or 'bf16 and fp32' for a mixed folder), from the
    cells rather than the config, whose `auto` each machine resolves its own way; None if unknown."""
    found = sorted({c["precision"] for c in results["cells"] if c.get("precision")})
    return " and ".join(found) or None


def short_verdict(answer):
    """'yes', 'in sign only', or 'no (2 of 6 against)' from verdict()'s sentence."""
    if answer.startswith("no ("):
        return "no (" + answer[4:].split(" mean")[0] + " against)"
    return answer.split(" (")[0]


def verdict_table(panels):
    """The three claims, panel by panel, as the rows of a Markdown table: each verdict with the
    difference nearest to refuting it (the largest mean)."""
    names = list(claims([]))
    lines = ["| panel | folder | " + " | ".join(f"claim {n}" for n in names) + " |",
             "|---" * (2 + len(names)) + "|"]
    for key in PANELS:
        if key not in panels:
            lines.append(f"| {key[0]}, gamma {key[1]} | not run |" + " |" * len(names))
            continue
        results = panels[key]
        seeds = sorted({c["seed"] for c in results["cells"]})
        precision = precision_of(results)
        where = f"{results['config']['out']} ({len(seeds)} seed{'s' * (len(seeds) != 1)}" + \
            (f", {precision})" if precision else ")")
        row = []
        for answer, diffs in claims(results["cells"]).values():
            if not diffs:
                row.append(short_verdict(answer))
                continue
            label, d = max(diffs, key=lambda x: x[1]["mean"])
            ci = "" if d["ci_low"] is None else f" [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
            row.append(f"{short_verdict(answer)}; nearest against: {label} {d['mean']:+.4f}{ci}")
        lines.append(f"| {key[0]}, gamma {key[1]} | {where} | " + " | ".join(row) + " |")
    return lines


def points(panels, paper, corrected=None):
    """Every plotted point, ours (mean and 95% interval; MBEM with a corrected M-step as
    `mbem (<step>)`) and the paper's, as CSV rows."""
    rows = []
    for key in PANELS:
        for step, by_r in (corrected or {}).get(key, {}).items():
            rows += [{"source": "ours, CIFAR-10", "worker_model": key[0], "gamma": key[1],
                      "algorithm": f"mbem ({step})", "redundancy": r, "seeds": k, "test_error": round(mean, 5),
                      "ci_low": None if low is None else round(low, 5),
                      "ci_high": None if high is None else round(high, 5)}
                     for r, (mean, low, high, k) in step_points(by_r).items()]
        for algorithm, by_r in report.summarise(panels[key]["cells"]).items() if key in panels else []:
            for r, values in sorted(by_r.items()):
                mean, low, high = interval(values)
                rows.append({"source": "ours, CIFAR-10", "worker_model": key[0], "gamma": key[1],
                             "algorithm": algorithm, "redundancy": r, "seeds": len(values),
                             "test_error": round(mean, 5),
                             "ci_low": None if low is None else round(low, 5),
                             "ci_high": None if high is None else round(high, 5)})
        for algorithm, by_r in paper.get(key, {}).items():
            rows += [{"source": "paper, ImageNet", "worker_model": key[0], "gamma": key[1], "algorithm": algorithm,
                      "redundancy": r, "test_error": e} for r, e in sorted(by_r.items())]
    return rows


def errorbar(ax, rs, stats, **style):
    """Means and 95% intervals at each r (one seed: no interval)."""
    err = [[0 if lo is None else m - lo for m, lo, _ in stats], [0 if hi is None else hi - m for m, _, hi in stats]]
    ax.errorbar(rs, [m for m, _, _ in stats], yerr=err, capsize=3, **style)


def plot(panels, paper, out, corrected=None):
    plt = report.pyplot()
    rows = 2 if paper else 1
    fig, axes = plt.subplots(rows, len(PANELS), figsize=(4 * len(PANELS), 3.6 * rows), squeeze=False,
                             sharex="col", sharey="row")  # one r axis per panel: the shapes line up
    for col, key in enumerate(PANELS):
        ax = axes[0, col]
        results = panels.get(key)
        cells = results["cells"] if results else []
        ours = report.summarise(cells)
        for algorithm in (a for a in ALGORITHMS if a in ours):
            by_r = ours[algorithm]
            rs = sorted(by_r)
            errorbar(ax, rs, [interval(by_r[r]) for r in rs], marker="o", color=COLOR[algorithm],
                     label=report.NAMES[algorithm])
        for step, by_r in (corrected or {}).get(key, {}).items():
            stats = step_points(by_r)
            errorbar(ax, list(stats), [v[:3] for v in stats.values()], marker=STEP_MARKER.get(step, "x"),
                     linestyle="--", color=COLOR["mbem"], alpha=0.7, label=f"MBEM, --mbem-step {step}")
        done = len({c["seed"] for c in cells})
        planned = len(results["config"]["seeds"]) if results else 0
        seeds = f"{done} of {planned} seeds" if done < planned else f"{done} seeds"
        precision = precision_of(results) if results else None
        ax.set_title(f"{key[0]}, gamma {key[1]}\nours: CIFAR-10, " + (precision + ", " if precision else "")
                     + (seeds if results else "not run"), fontsize=9)
        if not cells:
            ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
        if paper:
            bottom = axes[1, col]
            for algorithm, by_r in paper.get(key, {}).items():
                rs = sorted(by_r)
                bottom.plot(rs, [by_r[r] for r in rs], marker="s", color=COLOR[algorithm],
                            label=report.NAMES[algorithm])
            bottom.set_title(f"paper: ImageNet ({RELEASE_FILE[key]})", fontsize=9)
        axes[-1, col].set_xlabel("redundancy r, fixed budget")
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("top-1 test error\n(mean, 95% t-interval)")
    handles = {}  # every line of the top row in one legend below it: the corrected steps may be in any panel
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    if paper:
        axes[1, 0].set_ylabel("top-1 test error")
        axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.legend(handles.values(), [f"ours: {label}" for label in handles], loc="upper center", ncol=len(handles),
               fontsize=8, bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", help=f"results folders, one per panel (default: those of {', '.join(FOLDERS)} "
                   "that hold a results.json)")
    p.add_argument("--paper", default=PAPER_CSV, help="the paper's points (default: %(default)s); "
                   "its row is left out when the file is not there")
    p.add_argument("--out", default="results/paper-figure.png",
                   help="the figure, its CSV beside it (default: %(default)s)")
    p.add_argument("--corrected", nargs="*", metavar="FOLDER",
                   help="folders of MBEM with a corrected M-step (--mbem-step, beyond the paper), drawn dashed in "
                        "their panel and left out of the claims (default, with the default panels: those of "
                        f"{', '.join(CORRECTED)} that hold a results.json; --corrected alone: none)")
    args = p.parse_args(argv)
    if problem := output_problem(args.out):
        p.error(f"--out {args.out}: {problem}")
    try:
        panels = read_panels(args.folders or [f for f in FOLDERS if os.path.isfile(os.path.join(f, "results.json"))])
        if args.corrected is None:  # the defaults go with the default panels, those whose panel is drawn
            args.corrected = [] if args.folders else [f for f in CORRECTED if os.path.isfile(
                os.path.join(f, "results.json")) and panel_of(load(f)) in panels]
        corrected = read_corrected(args.corrected, panels)
    except InputError as e:
        p.error(str(e))
    paper = read_paper(args.paper) if os.path.isfile(args.paper) else {}
    if not paper:
        print(f"note: {args.paper} not found: the paper's row is left out")
    differ = protocol_differences(panels)
    if "precision" in differ:  # bf16 and fp32 round differently: a panel's shape holds, levels across panels shift
        print("note: the panels' runs differ in precision (each panel's title names its own): compare their shapes")
    if others := [d for d in differ if d != "precision"]:
        print(f"warning: the panels' runs differ in {', '.join(others)}: their shapes do not compare")
    plot(panels, paper, args.out, corrected)
    table = os.path.splitext(args.out)[0] + ".csv"
    columns = ["source", "worker_model", "gamma", "algorithm", "redundancy", "seeds", "test_error", "ci_low", "ci_high"]
    report.write_csv(table, points(panels, paper, corrected), columns)
    for key in PANELS:
        print(format_panel(key, panels.get(key), paper.get(key), corrected.get(key)))
    print("\nthe verdicts, as a Markdown table:\n" + "\n".join(verdict_table(panels)))
    print(f"\nwrote {args.out} and {table}")

if __name__ == "__main__":
    main()
