"""The forward model (paper Section 4): what an image of the sky looks like given a catalog and a field.

* :mod:`~npejax.sim.prior`: the catalog prior (Table 1) and the one-source-per-tile catalog.
* :mod:`~npejax.sim.psf`: the SDSS six-parameter PSF (two Gaussians and a power law).
* :mod:`~npejax.sim.fields`: the field bank (PSF, sky, gain, calibration per survey field).
* :mod:`~npejax.sim.interp`: linear interpolation weights on a grid of nodes (sky grids).
* :mod:`~npejax.sim.synthetic_bank`: the embedded SYNTHETIC SDSS-like bank and how it is built.
* :mod:`~npejax.sim.render`: the GalSim k-space renderer, noise and sky subtraction.
* :mod:`~npejax.sim.jax_render`: the same forward model in JAX (jit-compiled, batched, float32), for accelerators.
* :mod:`~npejax.sim.pipeline`: batches from ``(seed, index)`` and the prefetching worker-process simulator.
"""
