"""What one evaluation does: :class:`EvalSettings`, built once (:meth:`EvalSettings.create`) from a config's ``eval``
section and the caller's overrides (the command line's flags, the experiment's test set), and checked once, when
it is built.

The ``eval`` keys (``num_bootstrap``, ``num_bins``, ``ceiling_galaxies`` -- 0: no r-band ceiling --, ``baseline``,
``snr``, ``seed``) are documented in ``configs/default.py``; this module has no defaults of its own. The config is
the one given, else the first network's (its workdir's config.json; a config saved before the section existed
gets the values npejax used then: :func:`npejax.configuration.upgrade`); an evaluation of catalogs alone, with
no config, uses those same values (:func:`npejax.configuration.eval_section`). The config also says how to
simulate a test set that is not there yet (its simulator and prior, at ``--prior``; ``simulator.num_workers``
processes unless ``num_workers`` is given).

Refused when built (:class:`EvaluationError`, one line naming the option and the value), before anything is read
or written: nothing to evaluate, method names repeated or named ``sep`` or ``ceiling``, a method name that is
not a plain file name (letters, digits, ``_``, ``.``, ``-``, starting with a letter or digit: it becomes
``OUT/predictions/NAME.fits``; :func:`npejax.io.check_plain_name`), a ``--catalog`` file inside
``OUT/predictions`` (it would be overwritten by its own detections), a negative ``ceiling_galaxies`` or
``num_bootstrap``, fewer than one bin, a ``--workdir`` that is no directory (unless ``trained_later``:
``npejax.experiment`` checks its evaluations so before training their networks), neither ``--num-images`` nor
``--test-dir``, fewer than one image to simulate, and an ``--out`` that is a file or not writable. The test set
and the catalogs are checked by :func:`npejax.evaluation.evaluate.evaluate`, which reads them.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from npejax import configuration, io
from npejax.evaluation.headline import BASELINE, CEILING
from npejax.nn import checkpoints
from npejax.nn import pretrained as pretrained_lib
from npejax.schema import FIELD_PRIORS

PREDICTIONS_DIR = "predictions"  # OUT/predictions/NAME.fits: each method's detections (npejax.evaluation.report)
CHUNK_IMAGES = 256  # test images in memory at a time (a multiple of the prediction batch: the same batches)


class EvaluationError(ValueError):
    """Inconsistent evaluation inputs (test set, catalogs, options)."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything :func:`npejax.evaluation.evaluate.evaluate` needs to know (checked when built)."""

    out_dir: str  # the report's directory
    test_dir: str | None  # the test set, simulated there when num_images is given (None: OUT_DIR/test-PRIOR)
    workdirs: dict  # method name -> training directory (its best checkpoint catalogs the test set)
    catalogs: dict  # method name -> prediction catalog: a file (FITS, CSV) or a table (or a mapping of columns)
    pretrained: tuple  # names of networks shipped with the package (npejax.nn.pretrained), each a method of its name
    prior: str  # field prior of a test set simulated here ("many" or "one")
    num_images: int | None  # test images to simulate into test_dir (resumable); None: test_dir as it is
    num_bootstrap: int  # eval.num_bootstrap
    num_bins: int  # eval.num_bins
    ceiling_galaxies: int  # eval.ceiling_galaxies (0: no r-band ceiling)
    baseline: bool  # eval.baseline
    snr: bool  # eval.snr
    seed: int  # eval.seed
    sim_config: ml_collections.ConfigDict | None  # simulation settings of a test set simulated here
    num_workers: int | None  # simulator processes for that (None: no config, nothing can be simulated)
    progress: bool = True  # progress bars
    chunk_images: int = CHUNK_IMAGES
    # where the values came from, for the errors: the option of num_images and the prefix of the eval keys
    num_images_option: str = "--num-images"
    eval_prefix: str = "eval."
    trained_later: bool = False  # the workdirs are trained after these settings are checked (npejax.experiment)

    @property
    def test_path(self) -> str:
        """The test set's directory: ``test_dir``, or ``OUT_DIR/test-PRIOR``."""
        return self.test_dir or os.path.join(self.out_dir, f"test-{self.prior}")

    @property
    def ceiling(self) -> bool:
        """Whether the r-band ceiling is computed."""
        return self.ceiling_galaxies > 0

    @property
    def names(self) -> list[str]:
        """The methods' names, networks first (the baseline, when evaluated, comes after them)."""
        return list(self.workdirs) + list(self.pretrained) + list(self.catalogs)

    def __post_init__(self):
        names = self.names
        if not names and not self.baseline:
            raise EvaluationError(
                "nothing to evaluate: give at least one --workdir NAME=DIR, --pretrained NAME or --catalog NAME=FILE"
            )
        if len(set(names)) != len(names) or BASELINE in names or CEILING in names:
            raise EvaluationError(f"method names must be unique and not {BASELINE!r} or {CEILING!r}: {names}")
        options = {**{n: "--workdir" for n in self.workdirs}, **{n: "--pretrained" for n in self.pretrained}}
        for name in names:  # each becomes OUT/predictions/NAME.fits
            try:
                io.check_plain_name(name, options.get(name, "--catalog"))
            except io.OutputPathError as exc:
                raise EvaluationError(str(exc)) from None
        predictions = os.path.join(self.out_dir, PREDICTIONS_DIR)
        for name, catalog in self.catalogs.items():  # rewritten there as its detections alone
            if isinstance(catalog, (str, os.PathLike)):
                try:
                    io.check_not_under(catalog, f"--catalog {name}", predictions, "the report's detections, rewritten")
                except io.OutputPathError as exc:
                    raise EvaluationError(str(exc)) from None
        key = self.eval_prefix
        if self.ceiling_galaxies < 0:
            raise EvaluationError(
                f"{key}ceiling_galaxies must be >= 0 (0: no r-band ceiling), got {self.ceiling_galaxies}"
            )
        if self.num_bins < 1:
            raise EvaluationError(f"{key}num_bins must be >= 1, got {self.num_bins}")
        if self.num_bootstrap < 0:
            raise EvaluationError(f"{key}num_bootstrap must be >= 0 (0: no bootstrap bands), got {self.num_bootstrap}")
        for name, w in self.workdirs.items():
            if not self.trained_later and not os.path.isdir(w):
                raise EvaluationError(f"--workdir {name}={w}: no such directory")
        for name in self.pretrained:
            pretrained_lib.entry(name)  # an unknown name lists the shipped ones
        if self.num_images is None and self.test_dir is None:
            raise EvaluationError("give --num-images N (simulate a test set) or --test-dir DATASET")
        if self.num_images is not None and self.num_images < 1:
            raise EvaluationError(f"{self.num_images_option} must be >= 1, got {self.num_images}")
        io.check_output_dir(self.out_dir, "--out")

    @classmethod
    def create(
        cls,
        out_dir: str,
        config: ml_collections.ConfigDict | None = None,
        *,
        workdirs: dict | None = None,
        catalogs: dict | None = None,
        pretrained=(),
        prior: str = FIELD_PRIORS[0],
        num_images: int | None = None,
        test_dir: str | None = None,
        num_workers: int | None = None,
        progress: bool = True,
        chunk_images: int = CHUNK_IMAGES,
        num_images_option: str = "--num-images",
        eval_prefix: str = "eval.",
        trained_later: bool = False,
        **overrides,
    ) -> EvalSettings:
        """The settings of an evaluation into ``out_dir``: each ``eval`` key from ``overrides`` (``num_bootstrap=``,
        ``num_bins=``, ``ceiling_galaxies=``, ``baseline=``, ``snr=``, ``seed=``; None: not given) or else from
        ``config`` (default: the first workdir's config.json); ``config`` also simulates a test set (module doc).
        EvaluationError for an unknown override or a value refused (module doc), naming ``num_images_option``
        and the eval keys with ``eval_prefix``; ``trained_later``: the workdirs need not exist yet (an
        experiment checks its evaluations before it trains their networks)."""
        workdirs, catalogs, pretrained = dict(workdirs or {}), dict(catalogs or {}), tuple(pretrained or ())
        if config is None and workdirs:
            config = _saved_config(next(iter(workdirs.values())))
        elif config is None and pretrained and pretrained[0] in pretrained_lib.available():
            config = pretrained_lib.load(pretrained[0])[0]  # the first pretrained network's training config
        section = configuration.eval_section(config)
        unknown = sorted(set(overrides) - set(section))
        if unknown:
            raise TypeError(f"unknown evaluation settings {unknown}: the eval keys are {sorted(section)}")
        value = {key: section[key] if overrides.get(key) is None else overrides[key] for key in section}
        if num_workers is None and config is not None:
            num_workers = config.simulator.num_workers
        return cls(
            out_dir=os.fspath(out_dir),
            test_dir=os.fspath(test_dir) if test_dir else None,
            workdirs=workdirs,
            catalogs=catalogs,
            pretrained=pretrained,
            prior=prior,
            num_images=None if num_images is None else int(num_images),
            num_bootstrap=int(value["num_bootstrap"]),
            num_bins=int(value["num_bins"]),
            ceiling_galaxies=int(value["ceiling_galaxies"]),
            baseline=bool(value["baseline"]),
            snr=bool(value["snr"]),
            seed=int(value["seed"]),
            sim_config=config,
            num_workers=None if num_workers is None else int(num_workers),
            progress=bool(progress),
            chunk_images=int(chunk_images),
            num_images_option=num_images_option,
            eval_prefix=eval_prefix,
            trained_later=bool(trained_later),
        )


def _saved_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The config.json of a training directory (upgraded); None where there is none (the directory is refused
    when the settings are checked, or when its network is loaded)."""
    if not os.path.isfile(os.path.join(workdir, checkpoints.CONFIG_FILE)):
        return None
    return checkpoints.load_config(workdir)
