"""The paper's Section 7 experiment at CPU size (python -m npejax.experiment; about an hour on 2 cores).

Four networks (single-field, PSF-unaware, PSF-aware, and PSF-aware with cpu_small's four-colour checkerboard) of
the ``configs/cpu_small.py`` size and budget, each evaluated with the Source Extractor baseline on 2000 test
images from each prior (many fields, one field).
"""

from configs import cpu_small, experiment


def get_config():
    config = experiment.get_config()
    config.network = cpu_small.get_config()
    config.num_test_images = 2000
    config.num_bootstrap = 200
    return config
