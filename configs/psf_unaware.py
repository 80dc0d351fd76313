"""PSF-unaware network on the many-field prior p_many: the image and background only."""

from configs import default


def get_config():
    config = default.get_config()
    config.fields.prior = "many"
    config.model.variant = "psf_unaware"
    return config
