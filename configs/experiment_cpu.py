"""The paper's Section 7 experiment at CPU size (python -m npejax.experiment; about an hour on 2 cores).

Four networks (single-field, PSF-unaware, PSF-aware, and PSF-aware with cpu_small's four-colour checkerboard) of
the ``configs/cpu_small.py`` size and budget, each evaluated with the Source Extractor baseline on 2000 test
images from each prior (many fields, one field).
"""

from configs import cpu_small, experiment

NUM_TEST = 2000  # test images per prior (data.num_test of the networks' config)


def with_network(network):
    """The CPU experiment with ``network`` as the shared network config (its test sets of :data:`NUM_TEST`)."""
    config = experiment.get_config()
    config.network = network
    config.network.data.num_test = NUM_TEST
    return config


def get_config():
    return with_network(cpu_small.get_config())
