"""PSF-aware network on p_many with the checkerboard posterior: tiles decided in two interleaved colours, the
second given the first (SPEC.md "Tile boundaries"; the paper's Section 5.1 names the limitation it removes)."""

from configs import psf_aware


def get_config():
    config = psf_aware.get_config()
    config.posterior.context = "checkerboard"
    return config
