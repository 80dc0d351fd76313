"""The paper's Section 7 experiment at CPU size (python -m npejax.experiment; well under an hour on 2 cores).

Three networks (single-field, PSF-unaware, PSF-aware) of the ``configs/cpu_small.py`` size, each
evaluated with the Source Extractor baseline on test sets from both priors (many fields, one field).
"""

from configs import cpu_small
from configs import experiment


def get_config():
    config = experiment.get_config()
    config.network = cpu_small.get_config()
    config.num_test_images = 1000
    config.num_bootstrap = 200
    return config
