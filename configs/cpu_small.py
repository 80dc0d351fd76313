"""Small CPU configuration: the PSF-aware setup at a size that runs on a 2-core machine in minutes."""

from configs import psf_aware


def get_config():
    config = psf_aware.get_config()
    config.data.num_train = 2048
    config.data.num_val = 256
    config.data.num_test = 512
    config.data.shard_size = 256
    return config
