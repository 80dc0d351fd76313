"""Inputs for measuring `python -m npejax.survey catalog` on full SDSS-size frames.

    python benchmarks/survey_setup.py OUTDIR [CONFIG ...]      (default configs: cpu_small psf_aware)
    cd OUTDIR && python -m npejax.survey catalog --workdir run_cpu_small --frames frames.txt --out out_cpu_small

Writes OUTDIR/run_<config>/: a training directory holding a freshly initialised network of configs/<config>.py
(npejax.nn.state.create_state, as benchmarks/predict_throughput.py's fresh network; normalizer fitted to 64
synthetic 80 x 80 images), and OUTDIR/frames/frame<k>.fits (k = 0, 1, 2): 1489 x 2048 synthetic frames of
benchmarks/predict_throughput.py (Gaussian sky noise of the embedded bank's reference field, Gaussian blobs at
the prior's density), with OUTDIR/frames.txt listing them with that field's background and field id.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import importlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import predict_throughput as pt  # noqa: E402
from astropy.io import fits  # noqa: E402

from npejax import configuration, io  # noqa: E402
from npejax.nn import checkpoints  # noqa: E402
from npejax.nn import inputs as inputs_lib  # noqa: E402
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib


def main(out, names):
    os.makedirs(os.path.join(out, "frames"), exist_ok=True)
    for name in names:
        config = importlib.import_module(f"configs.{name}").get_config()
        background, sigma, psf, field = pt.sky_of_reference(config)
        rng = np.random.default_rng(0)
        size = int(config.image_size)
        sample = pt.synthetic_inputs(
            rng, 64, (size, size), background, sigma, psf, float(config.prior.sources_per_pixel)
        )
        workdir = os.path.join(out, f"run_{name}")
        state = state_lib.create_state(config, model_lib.from_config(config), 1, jax.random.key(0))
        config_json = configuration.to_json(config)
        os.makedirs(workdir, exist_ok=True)
        io.write_json(os.path.join(workdir, checkpoints.CONFIG_FILE), config_json)
        meta = dict(
            epoch=1,
            best_val=0.0,
            bad_epochs=0,
            history=[],
            normalizer=inputs_lib.Normalizer.fit(*sample).to_dict(),
            variant=config.model.variant,
            config=config_json,
            val_nll=0.0,
        )
        with checkpoints.managers(workdir) as managers:
            checkpoints.save([managers.latest, managers.best], 1, state, meta)
        print(f"{workdir}: fresh {name} network")
    rng = np.random.default_rng(1)
    lines = []
    for k in range(3):
        image, _, _ = pt.synthetic_inputs(
            rng, 1, (1489, 2048), background, sigma, psf, float(config.prior.sources_per_pixel)
        )
        fits.PrimaryHDU(image[0]).writeto(os.path.join(out, "frames", f"frame{k}.fits"), overwrite=True)
        lines.append(f"frames/frame{k}.fits background={background:.6f} field-id={field}\n")
    io.atomic_write(os.path.join(out, "frames.txt"), "".join(lines))
    print(f"{out}/frames.txt: 3 frames of 1489 x 2048 pixels, background {background:.3f} nmgy, field {field}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outdir", help="where the networks, frames and frames.txt are written")
    parser.add_argument("configs", nargs="*", default=["cpu_small", "psf_aware"], help="config names (configs/)")
    args = parser.parse_args()
    main(args.outdir, args.configs)
