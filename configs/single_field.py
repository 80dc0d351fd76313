"""Single-field network: trained on the reference field only (prior p_one)."""

from configs import default


def get_config():
    config = default.get_config()
    config.fields.prior = "one"
    return config
