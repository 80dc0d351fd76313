"""Single-field network: trained on the reference field only (prior p_one), image and background inputs."""

from configs import default


def get_config():
    config = default.get_config()
    config.fields.prior = "one"
    config.model.variant = "single_field"
    return config
