"""The paper's Section 7 experiment at the paper's size (python -m npejax.experiment; needs a GPU).

Trains the paper's three networks from ``network`` (the shared settings) -- ``single`` (image and background,
trained on the reference field, p_one), ``unaware`` (image and background, p_many) and ``aware`` (plus the
six PSF parameters, p_many) -- and ``aware_cb`` (PSF-aware with the checkerboard posterior), then simulates a
test set of ``network.data.num_test`` images per prior in ``priors`` and evaluates every network and the Source
Extractor baseline on it (npejax.evaluate) with the settings of ``network.eval`` (configs/default.py).

What differs between the networks (``model.variant``, the training ``fields.prior`` and ``posterior.context``)
is read from their own config files, configs/single_field.py, psf_unaware.py, psf_aware.py and
psf_aware_checkerboard.py, into ``network_settings``; everything else is ``network``.
"""

import ml_collections

from configs import psf_aware, psf_aware_checkerboard, psf_unaware, single_field

# network name -> its config file (paper Section 6; aware_cb: PSF-aware with the checkerboard posterior)
NETWORK_CONFIGS = {
    "single": single_field,
    "unaware": psf_unaware,
    "aware": psf_aware,
    "aware_cb": psf_aware_checkerboard,
}


def network_settings() -> ml_collections.ConfigDict:
    """name -> ConfigDict(variant=model.variant, prior=fields.prior, context=posterior.context) of each
    network's config file."""
    settings = ml_collections.ConfigDict()
    for name, module in NETWORK_CONFIGS.items():
        c = module.get_config()
        settings[name] = ml_collections.ConfigDict(
            dict(variant=c.model.variant, prior=c.fields.prior, context=c.posterior.context)
        )
    return settings


def get_config():
    config = ml_collections.ConfigDict()
    config.network = psf_aware.get_config()  # shared network, training and simulation settings
    # Per network: model.variant and training fields.prior that replace those of `network` (from the
    # network's config file, above; e.g. single: variant "single_field", prior "one").
    config.network_settings = network_settings()
    config.networks = "single,unaware,aware,aware_cb"  # subset of network_settings to train, comma-separated
    config.priors = "many,one"  # test-set priors: "many" (p_many) and/or "one" (p_one)
    return config
