"""Small CPU configuration (the README main command): the PSF-aware setup at a size that trains on a 2-core
machine in minutes, with the checkerboard posterior over four colours (2 x 2 blocks of tiles).

Chosen from a sweep on the 2-core VM (same seed; 500 fresh p_many test images, sources with r < 19, 1-pixel
matching, prob_source > 0.5; benchmarks/RESULTS.md "Training on the CPU"): two stages at tile resolution /2 and
/4 instead of a full-resolution C3 stage (about 1.3x more images/s), Adam 3e-3 instead of 1e-3, four colours
(every tile corner's four tiles decide in turn), 12 epochs of 1280 images with the rate decayed x0.1 after epoch
10, batch 16 with 4 train steps per jitted call (the step runs 1.35x faster per image at batch 16 than at 32 on
this CPU, and XLA:CPU runs 4 straight-line steps faster than 4 calls), and the aperture-flux term
(``model.aperture_flux``: bright fluxes within 0.1 mag from r 9 to 21). Catalogs are read with
``posterior.decode = "group"`` (the default): a source split over the tiles around a corner is detected once,
which the greedy per-tile reading of this network does not do for r 14 stars (benchmarks/RESULTS.md, "Stars on
tile corners"; tests/test_trained.py checks it).
"""

from configs import psf_aware


def get_config():
    config = psf_aware.get_config()
    config.posterior.context = "checkerboard"
    config.posterior.colours = 4
    config.model.width = 16
    config.model.stem_blocks = 2
    config.model.stages = ((2, 1, 2), (2, 1, 2))
    config.model.aperture_flux = True
    config.train.batch_size = 16
    config.train.steps_per_dispatch = 4
    config.train.images_per_epoch = 1280  # 80 steps of 16, 20 jitted calls of 4 steps
    config.train.num_epochs = 12
    config.train.learning_rate = 3e-3
    config.train.lr_decay_epoch = 10
    config.train.patience = 3
    config.train.normalizer_images = 128
    config.simulator.num_workers = 1
    config.data.num_train = 2048
    config.data.num_val = 256
    config.data.num_test = 512
    config.data.shard_size = 256
    return config
