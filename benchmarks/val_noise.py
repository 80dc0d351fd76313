r"""How noisy is a validation NLL? Per-image NLL of trained networks on the same validation images.

    python benchmarks/val_noise.py --workdir a=W1 --workdir b=W2 [--num-images 1024]

Each network's best checkpoint scores the first ``--num-images`` images of the validation split (the seed
training validates on, so its validation set is the first ``data.num_val`` of them; simulated in batches of
64, the count rounded down to whole batches). Prints each mean NLL with its standard error and per-image
standard deviation, and for two networks the paired difference on the same images with its standard error:
whether a validation set of N images can tell the two apart.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from npejax import cli, datasets  # noqa: E402
from npejax.nn import checkpoints, steps  # noqa: E402
from npejax.nn import model as model_lib  # noqa: E402
from npejax.nn.posterior import TilePosterior  # noqa: E402
from npejax.sim import pipeline  # noqa: E402

BATCH = 64


def define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("workdir", [], "NAME=DIR: a training directory (repeatable).", flag_values=fv)
    flags.DEFINE_integer("num-images", 1024, "Validation images.", lower_bound=BATCH, flag_values=fv)


def per_image_nll(workdir: str, num_images: int) -> np.ndarray:
    """NLL of each of the first ``num_images`` validation-split images under ``workdir``'s best checkpoint."""
    config, variables, normalizer = checkpoints.load_network(workdir, "best")
    net = model_lib.from_config(config)
    spec = pipeline.SimulationSpec.from_config(config, seed=datasets.split_seed(config.seed, "val"), batch_size=BATCH)

    @jax.jit
    def nll(batch):
        out = net.apply(variables, steps.features(batch, normalizer, config.model.variant), tiles=batch)
        return TilePosterior.from_params(out).tile_nll(batch).sum(axis=(1, 2))

    parts = [
        np.asarray(
            nll({k: jnp.asarray(v) for k, v in pipeline.simulate_batch(spec, i).items() if k in steps.NETWORK_KEYS})
        )
        for i in range(num_images // BATCH)
    ]
    return np.concatenate(parts)


def run(fv: flags.FlagValues) -> None:
    workdirs = cli.parse_pairs(fv.workdir, "--workdir")
    if not workdirs or any(not k or not v for k, v in workdirs.items()):
        raise cli.UsageError("give --workdir NAME=DIR (one or two)")
    per = {name: per_image_nll(w, fv["num-images"].value) for name, w in workdirs.items()}
    for name, v in per.items():
        print(
            f"{name}: validation NLL {v.mean():.3f} +- {v.std(ddof=1) / np.sqrt(len(v)):.3f} "
            f"(per-image std {v.std(ddof=1):.2f}, {len(v)} images)"
        )
    if len(per) == 2:
        (a, x), (b, y) = per.items()
        d = x - y
        print(f"{a} - {b}: {d.mean():.3f} +- {d.std(ddof=1) / np.sqrt(len(d)):.3f} (paired, same images)")


if __name__ == "__main__":
    raise SystemExit(cli.main(define_flags, run, doc=__doc__))
