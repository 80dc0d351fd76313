"""``configs/cpu.py`` trained on the artifacts of real SDSS frames, with the mask input channel: the
network for real frames at the CPU size, about 30 minutes on the 2-core development machine.

Every artifact of :mod:`npejax.sim.artifacts` on at its documented, realistic rate (the defaults of
``configs/default.py``, whose sources and assumptions the module's docstring gives): cosmic-ray residuals (9.3 per
1e6 pixels, 0.06 per 80 x 80 image), saturation and bleed trails (full well 25000 DN: stars brighter than about
r 14), diffraction spikes (stars brighter than r 17), bad columns (1e-3 per column), satellite trails (0.002 per
image) and masked blocks without data (0.01 per image), these filled with NaN as a frame's missing data and read
through ``model.mask_channel`` (``npejax.nn.inputs``, "Mask channel"), as a user's NaN pixels are in prediction.

The field bank stays the default (``fields.bank = "synthetic"``), that of the shipped ``cpu`` network, so that the
two differ only in the artifacts and the mask channel (benchmarks/RESULTS.md, "Artifacts of real frames").
"""

from configs import cpu


def get_config():
    config = cpu.get_config()
    for name in ("cosmic_rays", "saturation", "spikes", "bad_columns", "satellite", "masked"):
        config.artifacts[name].enabled = True
    config.artifacts.masked.fill = "nan"
    config.model.mask_channel = True
    return config
