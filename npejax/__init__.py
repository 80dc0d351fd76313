"""npejax: amortized Bayesian cataloging of astronomical images with spatially varying backgrounds and
PSFs, in JAX (a reimplementation of "Neural posterior estimation with spatially varying backgrounds and
PSFs"; SPEC.md).

The package reads as its architecture, one data path through five parts:

* :mod:`npejax.sim`: the forward model. Catalog prior, SDSS PSF model, field bank, GalSim renderer and
  the process-pool simulator that renders batches on the fly.
* :mod:`npejax.surveys`: survey files (SDSS psField / photoField / frame) read into a field bank, and
  their downloader.
* :mod:`npejax.datasets`: simulated batches cached on disk (writer and memory-mapped reader).
* :mod:`npejax.nn`: the inference network. Input normalization, CatalogNet, the tile posterior, train
  and eval steps, training loop, Orbax checkpoints and prediction from a checkpoint (arrays in, arrays out).
* :mod:`npejax.cataloging`: cataloging images with a trained network. Images from files (FITS with WCS,
  .npz, datasets, SDSS frames), the commands' flag values, the catalog's PNG and the survey runner.
* :mod:`npejax.evaluation`: matching and metrics, SNR, the Source Extractor baseline, the evaluation
  report and the paper's experiment.

Imports run one way, simulation <- datasets <- network <- cataloging and evaluation (surveys build on
simulation; cataloging reads survey frames), and every part shares :mod:`npejax.schema` (the catalog
contracts: keys, shapes, units), :mod:`npejax.io` (atomic file writes) and :mod:`npejax.catalogs` (catalog
tables); :mod:`npejax.cli` (the command-line convention) is for the commands and cataloging.
``tests/test_layout.py`` enforces the order. The commands are thin modules at the top:
``python -m npejax.main`` (train), ``.simulate``, ``.predict``, ``.survey``, ``.evaluate``, ``.experiment``, ``.sdss``,
``.synthetic_bank``, also installed as ``npejax-train``, ``npejax-simulate``, ...; each takes ``--help`` and
``--version``. ``npejax.__version__`` is the installed package's version.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("npejax")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.1.0"  # pyproject.toml's [project] version (tests/test_cli.py checks they agree)
