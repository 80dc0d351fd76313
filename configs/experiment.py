"""The paper's Section 7 experiment at the paper's size (python -m npejax.experiment; needs a GPU).

Trains three networks from ``network`` (the shared settings) -- ``single`` (image and background, trained
on the reference field, p_one), ``unaware`` (image and background, p_many) and ``aware`` (plus the six
PSF parameters, p_many) -- then simulates a test set per prior in ``priors`` and evaluates every network
and the Source Extractor baseline on it (npejax.evaluate).
"""

import ml_collections

from configs import psf_aware


def get_config():
    config = ml_collections.ConfigDict()
    config.network = psf_aware.get_config()  # shared network, training and simulation settings
    config.networks = "single,unaware,aware"  # subset of these three, comma-separated
    config.priors = "many,one"  # test-set priors: "many" (p_many) and/or "one" (p_one)
    config.num_test_images = 42_000  # per prior (paper: 42k)
    config.num_bootstrap = 200  # bootstrap resamples of the test images for the 1-sigma bands
    config.num_bins = 10  # equal-count magnitude bins (the reference cut-offs are always reported too)
    config.baseline = True  # Source Extractor (sep) on the same images with the known background
    return config
