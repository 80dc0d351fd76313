"""PSF-aware network on the many-field prior p_many (paper Section 6)."""

from configs import default


def get_config():
    config = default.get_config()
    config.fields.prior = "many"
    return config
