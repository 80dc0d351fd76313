"""The network for real SDSS r-band frames at the CPU size (shipped as the pretrained ``cpu_real``):
``configs/cpu.py``'s network and recipe trained on everything real frames hold that the clean simulations do
not, about 40 minutes on the 2-core development machine.

* Fields from the survey-spanning bank (``fields.bank = "survey"``, :mod:`npejax.sim.survey_bank`, SYNTHETIC):
  all six PSF parameters, the sky and its gradients varying as SDSS r-band fields do, so real psFields fall
  inside the training range (README, "The embedded field bank is synthetic").
* Every artifact of :mod:`npejax.sim.artifacts` on (``configs/cpu_artifacts.py``), masked blocks filled with
  NaN and read through the mask channel (``model.mask_channel``), with satellite trails drawn 25 times more
  often than on real frames (0.05 per 80 x 80 image instead of 0.002): at the real rate the network sees about
  160 trails in its 80k images, and a visible trail still became seven false sources per image
  (benchmarks/RESULTS.md, "Artifacts of real frames").
* No early stopping (``train.patience`` 12 of 12 epochs): the validation NLL of images with artifacts jumps from
  epoch to epoch, and ``cpu``'s patience of 3 stopped this run after epoch 11 with epoch 8's network, before the
  x0.1 learning rate of epoch 10 (the shipped network is the run resumed for its epoch 12).

Its evaluation and model card: ``npejax/pretrained/cpu_real.md``.
"""

from configs import cpu_artifacts


def get_config():
    config = cpu_artifacts.get_config()
    config.fields.bank = "survey"
    config.artifacts.satellite.rate = 0.05
    config.train.patience = 12
    return config
