r"""Network size x training budget sweep (issue 8, item 4): what a CPU recipe buys per minute of training.

    python benchmarks/sweep.py --out runs/sweep --sizes small,medium --cpu-minutes 7,15,30 \
        --cpu-images-per-s small=51.5,medium=18.7 --cpu-overhead-s small=109,medium=60 \
        [--num-test 1000] [--num-val 1024] [--workers 2] [--time-limit-s S]

Every network is ``configs/cpu_small.py`` (PSF-aware, four-colour checkerboard, aperture flux, batch 16,
Adam 3e-3, 12 epochs on the fly, the rate x0.1 after epoch 10, no early stopping) with the size of
:data:`SIZES` and an epoch length that makes the run last ``--cpu-minutes`` of training on the 2-core CPU
at that size's ``--cpu-images-per-s`` after its ``--cpu-overhead-s`` (images seen = (minutes x 60 - overhead) x
images/s, rounded to whole jitted calls).
The CPU rates are measured separately on the CPU (the epochs of a real training run, ``metrics.csv``'s
``images_per_s``), so the sweep itself can run where it is fast (a GPU) and still be read in CPU minutes;
the networks are the same whatever runs them, up to float rounding.

Every network is validated on the same ``--num-val`` images (``OUT/val``, simulated once with the
validation split's seed) and evaluated, with Source Extractor, on the same ``--num-test`` p_many test images
(:func:`npejax.evaluation.evaluate.evaluate`: headline means over the paper's reference bins). Writes
``OUT/sweep.json``, ``OUT/sweep.md`` (the table) and ``OUT/sweep.png`` (validation NLL, recall and precision
against CPU minutes and images seen); ``OUT/runs/SIZE-MINUTES`` are the training directories (a rerun
resumes or reuses them) and ``OUT/report`` the evaluation.
"""

from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from configs import cpu_small  # noqa: E402
from npejax import cli, configuration, io  # noqa: E402
from npejax import datasets as data_lib  # noqa: E402
from npejax.evaluation import evaluate  # noqa: E402
from npejax.evaluation.settings import EvalSettings  # noqa: E402
from npejax.nn import state as state_lib  # noqa: E402
from npejax.nn import train  # noqa: E402
from npejax.sim import pipeline  # noqa: E402

# name -> (width, stem_blocks, stages); "small" is configs/cpu_small.py's network
SIZES = {
    "small": (16, 2, ((2, 1, 2), (2, 1, 2))),
    "medium": (24, 2, ((2, 1, 2), (2, 2, 2))),
    "large": (32, 2, ((2, 2, 2), (2, 2, 2))),
}
EPOCHS, DECAY_EPOCH = 12, 10
HEADLINE_KEYS = ("precision", "recall", "accuracy", "mape")


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "Output directory.", flag_values=fv)
    flags.DEFINE_list("sizes", ["small", "medium"], f"Network sizes, of {list(SIZES)}.", flag_values=fv)
    flags.DEFINE_list(
        "cpu-minutes", ["8", "15", "30"], "Training budgets in minutes of the 2-core CPU.", flag_values=fv
    )
    flags.DEFINE_multi_string(
        "cpu-images-per-s",
        [],
        "SIZE=RATE: training images/s of that size on the 2-core CPU, steady epochs (repeatable or comma-separated).",
        flag_values=fv,
    )
    flags.DEFINE_multi_string(
        "cpu-overhead-s",
        [],
        "SIZE=SECONDS: the rest of a CPU run of that size (start-up, "
        "compiles, the last save) (repeatable or comma-separated; default 0).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num-val", 1024, "Validation images (shared by every network).", lower_bound=16, flag_values=fv
    )
    flags.DEFINE_integer("num-test", 1000, "p_many test images.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("workers", 2, "Simulator worker processes per training run.", lower_bound=0, flag_values=fv)
    flags.DEFINE_integer("num-bootstrap", 100, "Bootstrap resamples of the evaluation.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer(
        "seed",
        None,
        "Training seed of every network (config.seed; default: cpu_small's). The "
        "validation and test images stay those of cpu_small's seed.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "plot-only",
        [],
        "sweep.json files of earlier runs (e.g. two seeds): write their rows "
        "together as OUT/sweep.md and OUT/sweep.png, training nothing.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "time-limit-s",
        0.0,
        "Start no training after this many seconds (0: no limit); what was trained is still evaluated.",
        lower_bound=0.0,
        flag_values=fv,
    )


def network_config(size: str, images: int, val_dir: str, workers: int, seed: int | None = None):
    """configs/cpu_small.py at ``size``, trained on ``images`` images over 12 epochs (decay after 10)."""
    config = cpu_small.get_config()
    if seed is not None:
        config.seed = seed
    width, stem_blocks, stages = SIZES[size]
    config.model.width, config.model.stem_blocks, config.model.stages = width, stem_blocks, stages
    call = int(config.train.batch_size) * int(config.train.steps_per_dispatch)
    config.train.images_per_epoch = max(1, round(images / EPOCHS / call)) * call
    config.train.num_epochs, config.train.lr_decay_epoch = EPOCHS, DECAY_EPOCH
    config.train.patience = EPOCHS  # every run reaches its decayed rate and its last epoch
    config.data.val_dir = val_dir
    config.simulator.num_workers = workers
    config.train.progress = False
    return config


def parse_per_size(values, sizes, option: str, default: float | None = None) -> dict:
    """{size: float} from SIZE=NUMBER pairs (UsageError for a bad number or, without a default, a missing size)."""
    out = {}
    for name, value in cli.parse_pairs([v for item in values for v in item.split(",") if v], option).items():
        try:
            out[name] = float(value)
        except ValueError:
            raise cli.UsageError(f"{option} {name}={value}: not a number") from None
    missing = [s for s in sizes if s not in out]
    if missing and default is None:
        raise cli.UsageError(f"{option}: no value for size(s) {missing} (give SIZE=NUMBER)")
    return {s: out.get(s, default) for s in sizes}


def table(rows: list) -> str:
    """The markdown table of ``rows`` (sweep.json rows), Source Extractor last."""
    lines = [
        "| size | parameters | CPU min | images | seed | val NLL | recall [1-7] | precision [1-8] | "
        "accuracy [1-10] | MAPE % [1-10] | s here |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (list(SIZES).index(r["size"]), r["cpu_minutes"], r.get("seed", 0))):
        lines.append(
            f"| {r['size']} | {r['parameters']:,} | {r['cpu_minutes']:g} | {r['images']:,} | "
            f"{r.get('seed', 0)} | {r['val_nll']:.2f} | {r['recall']:.3f} +- {r['recall_std']:.3f} | "
            f"{r['precision']:.3f} +- {r['precision_std']:.3f} | {r['accuracy']:.3f} | "
            f"{r['mape']:.1f} | {r['seconds_here']:.0f} |"
        )
    r = rows[0]
    lines.append(
        f"| Source Extractor | | | | | | {r['sep_recall']:.3f} | {r['sep_precision']:.3f} | | {r['sep_mape']:.1f} | |"
    )
    return "\n".join(lines) + "\n"


def plot(rows: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("val_nll", "validation NLL (p_many)"),
        ("recall", "recall [ref. bins 1-7]"),
        ("precision", "precision [ref. bins 1-8]"),
        ("mape", "flux MAPE % [ref. bins 1-10]"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, label) in zip(axes, panels):
        for size in dict.fromkeys(r["size"] for r in rows):
            sub = [r for r in rows if r["size"] == size]
            minutes = sorted({r["cpu_minutes"] for r in sub})
            mean = [np.mean([r[key] for r in sub if r["cpu_minutes"] == m]) for m in minutes]
            (line,) = ax.plot(
                minutes, mean, "-", label=f"{size} ({sub[0]['parameters'] / 1e3:.1f}k parameters; mean over seeds)"
            )
            ax.plot([r["cpu_minutes"] for r in sub], [r[key] for r in sub], "o", color=line.get_color())
        sep = [r.get(f"sep_{key}") for r in rows if r.get(f"sep_{key}") is not None]
        if sep:
            ax.axhline(sep[0], color="k", ls=":", label="Source Extractor")
        ax.set_xlabel("training, minutes of the 2-core CPU")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(handles=axes[1].get_lines()[-1:], fontsize=8)  # the dotted line
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run(fv: flags.FlagValues) -> None:
    if not fv.out:
        raise cli.UsageError("--out is required")
    sizes = [s.strip() for s in fv.sizes if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad or not sizes:
        raise cli.UsageError(f"--sizes {','.join(fv.sizes)}: expected names of {list(SIZES)}")
    try:
        minutes = [float(m) for m in fv["cpu-minutes"].value]
    except ValueError:
        raise cli.UsageError(f"--cpu-minutes {fv['cpu-minutes'].value}: expected numbers") from None
    if fv["plot-only"].value:
        rows = []
        for path in fv["plot-only"].value:
            try:
                with open(path) as f:
                    rows += json.load(f)["rows"]
            except (OSError, ValueError, KeyError) as exc:
                raise cli.UsageError(f"--plot-only {path}: not a sweep.json ({exc})") from None
        os.makedirs(fv.out, exist_ok=True)
        io.atomic_write(os.path.join(fv.out, "sweep.md"), table(rows))
        plot(rows, os.path.join(fv.out, "sweep.png"))
        print(table(rows), end="", flush=True)
        return
    rates = parse_per_size(fv["cpu-images-per-s"].value, sizes, "--cpu-images-per-s")
    overheads = parse_per_size(fv["cpu-overhead-s"].value, sizes, "--cpu-overhead-s", default=0.0)
    out = os.path.abspath(fv.out)
    os.makedirs(out, exist_ok=True)
    base = cpu_small.get_config()
    val_dir = os.path.join(out, "val")
    spec = pipeline.SimulationSpec.from_config(
        base, seed=data_lib.split_seed(base.seed, "val"), batch_size=int(base.data.shard_size)
    )
    data_lib.write_dataset(
        spec,
        val_dir,
        int(fv["num-val"].value),
        "val",
        config=configuration.to_json(base),
        num_workers=max(1, int(fv.workers)),
        shard_size=int(base.data.shard_size),
        progress=False,
    )
    rows, workdirs, start = [], {}, time.time()
    for size in sizes:
        for m in minutes:
            name = f"{size}-{m:g}" + ("" if fv.seed is None else f"-seed{fv.seed}")
            limit = float(fv["time-limit-s"].value)
            if limit and time.time() - start > limit:
                print(f"== {name}: skipped (--time-limit-s {limit:g} passed)", flush=True)
                continue
            images = int(max(m * 60 - overheads[size], 0.0) * rates[size])
            config = network_config(size, images, val_dir, int(fv.workers), fv.seed)
            workdir = os.path.join(out, "runs", name)
            print(f"== {name}: {EPOCHS} epochs of {config.train.images_per_epoch} images", flush=True)
            t0 = time.time()
            summary = train.train_and_evaluate(config, workdir)
            seconds = time.time() - t0
            params = state_lib.num_parameters(summary["state"].params)
            workdirs[name] = workdir
            rows.append(
                dict(
                    size=size,
                    name=name,
                    seed=int(config.seed),
                    cpu_minutes=m,
                    images=EPOCHS * int(config.train.images_per_epoch),
                    parameters=params,
                    val_nll=float(summary["best_val_nll"]),
                    seconds_here=seconds,
                )
            )
            io.write_json(
                os.path.join(out, "sweep.json"),  # what is done so far
                dict(rows=rows, cpu_images_per_s=rates, cpu_overhead_s=overheads),
            )
    settings = EvalSettings.create(
        os.path.join(out, "report"),
        base,
        workdirs=workdirs,
        prior="many",
        num_images=int(fv["num-test"].value),
        test_dir=os.path.join(out, "test-many"),
        num_workers=max(1, int(fv.workers)),
        progress=False,
        baseline=True,
        num_bootstrap=int(fv["num-bootstrap"].value),
        ceiling_galaxies=0,
        snr=False,
    )
    results = evaluate.evaluate(settings)
    methods = results["methods"]
    for row in rows:
        head = methods[row["name"]]["headline"]
        for key in HEADLINE_KEYS:
            row[key], row[key + "_std"] = float(head[key]["value"]), float(head[key]["std"])
            row["sep_" + key] = float(methods["sep"]["headline"][key]["value"])
    io.write_json(
        os.path.join(out, "sweep.json"),
        dict(rows=rows, cpu_images_per_s=rates, cpu_overhead_s=overheads, num_test=int(fv["num-test"].value)),
    )
    io.atomic_write(os.path.join(out, "sweep.md"), table(rows))
    plot(rows, os.path.join(out, "sweep.png"))
    print(table(rows), end="", flush=True)


if __name__ == "__main__":
    raise SystemExit(cli.main(define_flags, run, doc=__doc__))
