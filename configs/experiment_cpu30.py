"""The paper's Section 7 experiment at the ``configs/cpu.py`` size (python -m npejax.experiment).

Four networks (single-field, PSF-unaware, PSF-aware, and PSF-aware with the four-colour checkerboard) of the
``configs/cpu.py`` size and budget (39.6k parameters, 12 epochs of 6656 images, about 30 minutes each on a
2-core CPU, so about 2.5 hours for the whole experiment there), each evaluated with the Source Extractor
baseline and the r-band ceiling on 2000 test images from each prior (many fields, one field). The test sets are
those of ``configs/experiment_cpu.py`` (same split seed and simulator), so an ``--out`` of one can lend its
``test-{many,one}`` to the other.
"""

from configs import cpu, experiment_cpu


def get_config():
    return experiment_cpu.with_network(cpu.get_config())
