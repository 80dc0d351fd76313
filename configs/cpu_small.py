"""Small CPU configuration: the PSF-aware setup at a size that trains on a 2-core machine in minutes, with the
checkerboard posterior (measured against independent tiles at this size and budget, c = 613314 prior, 500 fresh
p_many test images, r < 19: recall 0.943 against 0.916, precision 0.936 against 0.921, best validation NLL 8.60
against 9.74; benchmarks/RESULTS.md)."""

from configs import psf_aware


def get_config():
    config = psf_aware.get_config()
    config.posterior.context = "checkerboard"
    config.model.width = 16
    config.model.stem_blocks = 2
    config.model.stages = ((1, 1, 1), (2, 1, 2), (2, 1, 2))
    config.train.batch_size = 32
    config.train.images_per_epoch = 1280  # 40 steps of 32
    config.train.num_epochs = 10
    config.train.lr_decay_epoch = 8
    config.train.patience = 3
    config.train.normalizer_images = 128
    config.simulator.num_workers = 1
    config.data.num_train = 2048
    config.data.num_val = 256
    config.data.num_test = 512
    config.data.shard_size = 256
    return config
