r"""Same science from either renderer? One network config trained with ``simulator.backend = "galsim"`` and with
``"jax"``, two or more seeds each, evaluated on one GalSim-rendered test set (issue 22, item 4).

    python benchmarks/backend_science.py --out runs/backend_science [--train-config configs/cpu_small.py] \
        [--seeds 0,1] [--num-images 500]

Runs, one after another (each step resumable: a rerun finds the finished ones and goes on), in subprocesses:

1. ``python -m npejax.main --config CONFIG --workdir OUT/{galsim,jax}_s{SEED} --config.seed=SEED
   --config.simulator.backend=BACKEND --config.train.patience=10000`` (CONFIG: ``--train-config``; early stopping
   off, :data:`NO_EARLY_STOP`: every run trains the config's ``num_epochs``) for every seed, alternating the backends
   (galsim s0, jax s0, galsim s1, ...) so that a machine's changing load falls on both. ``config.seed`` sets the
   network's initialisation, the training images (and the normalizer's) and the validation set, all simulated with
   the run's backend (a cached ``data.val_dir`` rendered by GalSim is refused for a jax run: a dataset records its
   renderer), so the seeds' validation NLLs are on different images, and a jax run's on the JAX rendering of its
   galsim twin's catalogs and fields;
2. ``python -m npejax.simulate --config CONFIG --split test --backend galsim --num-images N --out OUT/test`` (the
   config's ``seed``: split seed ``npejax.datasets.split_seed(seed, "test")``, never trained or validated on);
3. ``python -m npejax.evaluate --workdir galsim_s0=... --workdir jax_s0=... ... --test-dir OUT/test --out
   OUT/report`` (every network and the Source Extractor baseline on the same images; the config's ``eval``).

Then prints, from ``OUT/report/metrics.json`` (``methods.NAME.headline``, npejax.evaluation.headline), one row per
headline metric and for ``test_nll`` (:func:`test_nll`: the tile-catalog NLL per image on the test set, mean and
standard error, the quantity training validates on, here on the same GalSim images for every run): each run's
value, the 1-sigma bootstrap error over the test images (none for the AUC), the galsim seeds' spread
``s = max - min`` and whether every jax value lies within ``[min - s, max + s]`` of the galsim values (the
rule of :func:`within_spread`; ``OUTSIDE`` otherwise), and each run's validation NLL by epoch
(``WORKDIR/metrics.csv``) and training wall time (the sum of its epochs' ``seconds``). The table is also written
to ``OUT/comparison.md``. Results: benchmarks/RESULTS.md, "Same science: cpu_small trained on each renderer,
three seeds".
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from npejax import cli, io  # noqa: E402

BACKENDS = ("galsim", "jax")
REFERENCE = "galsim"  # the backend whose seed-to-seed spread is the yardstick
# Every run trains the config's num_epochs: early stopping could end one run before the learning-rate drop while
# its twin trains past it, and the comparison would be of training lengths, not of renderers.
NO_EARLY_STOP = 10_000


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("out", None, "Output folder (created; an existing one is resumed).", flag_values=fv)
    flags.DEFINE_string(
        "train-config",
        os.path.join(ROOT, "configs", "cpu_small.py"),
        "Config file of the trainings, the test set and the evaluation.",
        flag_values=fv,
    )
    flags.DEFINE_string("seeds", "0,1", "Comma-separated config.seed values, at least two.", flag_values=fv)
    flags.DEFINE_integer("num-images", 500, "GalSim-rendered test images.", flag_values=fv)
    flags.mark_flag_as_required("out", flag_values=fv)


def parse_seeds(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; UsageError naming --seeds unless two or more distinct integers >= 0."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        seeds = []
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise cli.UsageError(
            f"--seeds {text!r}: expected two or more distinct integers >= 0 separated by commas (a spread needs "
            "two seeds), e.g. 0,1"
        )
    return seeds


def run_names(seeds: list[int]) -> list[tuple[str, str, int]]:
    """(name, backend, seed) of every training, the backends alternating within each seed."""
    return [(f"{b}_s{s}", b, s) for s in seeds for b in BACKENDS]


def within_spread(reference: list[float], value: float) -> bool:
    """Whether ``value`` lies in ``[min - s, max + s]``, ``s = max - min`` of the ``reference`` values (the
    reference seeds' spread, on either side of them)."""
    lo, hi = min(reference), max(reference)
    spread = hi - lo
    return lo - spread <= value <= hi + spread


def comparison(metrics: dict, names: list[tuple[str, str, int]]) -> list[dict]:
    """One row per headline key of ``metrics`` (an evaluation's metrics.json): the values and bootstrap errors
    of every run, the reference spread and the runs of the other backend outside it."""
    headline = {name: metrics["methods"][name]["headline"] for name, _, _ in names}
    rows = []
    for key in next(iter(headline.values())):
        values = {name: headline[name][key]["value"] for name, _, _ in names}
        ref = [values[n] for n, b, _ in names if b == REFERENCE]
        outside = [n for n, b, _ in names if b != REFERENCE and not within_spread(ref, values[n])]
        rows.append(
            dict(
                key=key,
                values=values,
                stds={name: headline[name][key]["std"] for name, _, _ in names},
                spread=max(ref) - min(ref),
                outside=outside,
            )
        )
    return rows


def test_nll(workdir: str, test_dir: str, batch_size: int = 50) -> np.ndarray:
    """Per-image NLL of the tile catalog (summed over tiles, as training's validation NLL; the true catalog as
    the checkerboard's context) of every image of the dataset ``test_dir`` under ``workdir``'s best checkpoint:
    the four networks scored on the same GalSim images, which their validation sets are not."""
    import jax
    import jax.numpy as jnp

    from npejax import datasets
    from npejax.nn import checkpoints, steps
    from npejax.nn import model as model_lib
    from npejax.nn.posterior import TilePosterior

    config, variables, normalizer = checkpoints.load_network(workdir, "best")
    net = model_lib.from_config(config)

    @jax.jit
    def nll(batch):
        out = net.apply(variables, steps.features(batch, normalizer, config.model.variant), tiles=batch)
        return TilePosterior.from_params(out).tile_nll(batch).sum(axis=(1, 2))

    parts = [
        np.asarray(nll({k: jnp.asarray(v) for k, v in batch.items() if k in steps.NETWORK_KEYS}))
        for batch in datasets.load(test_dir).batches(batch_size)
    ]
    return np.concatenate(parts)


def nll_entry(per_image: np.ndarray) -> dict:
    """A headline-like entry of per-image NLLs: mean, its standard error (``std``) and the image count."""
    return dict(value=float(per_image.mean()), std=float(per_image.std(ddof=1) / np.sqrt(len(per_image))))


def read_history(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def table(rows: list[dict], names: list[tuple[str, str, int]], histories: dict[str, list[dict]]) -> str:
    """The comparison as markdown: headline metrics, then validation NLL by epoch and training time."""
    cols = [n for n, _, _ in names]
    lines = [
        "| metric | " + " | ".join(cols) + f" | {REFERENCE} spread | within |",
        "| --- |" + " --- |" * (len(cols) + 2),
    ]
    for r in rows:
        cells = [f"{r['values'][n]:.4f}" + ("" if r["stds"][n] is None else f" +- {r['stds'][n]:.4f}") for n in cols]
        verdict = "yes" if not r["outside"] else "OUTSIDE: " + ", ".join(r["outside"])
        lines.append(f"| {r['key']} | " + " | ".join(cells) + f" | {r['spread']:.4f} | {verdict} |")
    epochs = max(len(h) for h in histories.values())
    lines += ["", "| epoch | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for e in range(epochs):
        cells = [f"{float(histories[n][e]['val_nll']):.2f}" if e < len(histories[n]) else "" for n in cols]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    seconds = [sum(float(row["seconds"]) for row in histories[n]) for n in cols]
    lines.append("| training s | " + " | ".join(f"{s:.0f}" for s in seconds) + " |")
    return "\n".join(lines)


def _call(args: list[str], log: str) -> float:
    """Runs ``python -m ARGS`` with this checkout first on the path, output to ``log``; its wall seconds."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    print("python -m " + " ".join(args), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if code:
        raise RuntimeError(f"exit status {code}: python -m {' '.join(args)} (log: {log})")
    return time.perf_counter() - start


def run(fv: flags.FlagValues) -> None:
    seeds = parse_seeds(fv.seeds)
    if fv["num-images"].value < 1:
        raise cli.UsageError(f"--num-images {fv['num-images'].value}: expected a positive number of test images")
    config = os.path.abspath(fv["train-config"].value)
    if not os.path.isfile(config):
        raise cli.UsageError(f"--train-config {fv['train-config'].value!r}: no such file")
    out = os.path.abspath(io.check_output_dir(fv.out))
    os.makedirs(out, exist_ok=True)
    names = run_names(seeds)
    for name, backend, seed in names:
        wall = _call(
            [
                "npejax.main",
                f"--config={config}",
                f"--workdir={os.path.join(out, name)}",
                f"--config.seed={seed}",
                f"--config.simulator.backend={backend}",
                f"--config.train.patience={NO_EARLY_STOP}",
                "--config.train.progress=false",
            ],
            os.path.join(out, f"train_{name}.log"),
        )
        print(f"  {name}: {wall:.0f} s", flush=True)
    test = os.path.join(out, "test")
    _call(
        [
            "npejax.simulate",
            f"--config={config}",
            "--split=test",
            "--backend=galsim",
            f"--num-images={fv['num-images'].value}",
            f"--out={test}",
            "--noprogress",
        ],
        os.path.join(out, "simulate_test.log"),
    )
    report = os.path.join(out, "report")
    workdirs = [f"--workdir={name}={os.path.join(out, name)}" for name, _, _ in names]
    _call(["npejax.evaluate", *workdirs, f"--test-dir={test}", f"--out={report}"], os.path.join(out, "evaluate.log"))
    with open(os.path.join(report, "metrics.json")) as f:
        metrics = json.load(f)
    for name, _, _ in names:  # the tile-catalog NLL on the GalSim test images, next to the headline metrics
        metrics["methods"][name]["headline"]["test_nll"] = nll_entry(test_nll(os.path.join(out, name), test))
    histories = {name: read_history(os.path.join(out, name)) for name, _, _ in names}
    text = table(comparison(metrics, names), names, histories)
    io.atomic_write(os.path.join(out, "comparison.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    raise SystemExit(cli.main(define_flags, run, doc=__doc__))
