"""Survey files read into a field bank (:class:`npejax.sim.fields.FieldBank`).

* :mod:`~npejax.surveys.sdss`: SDSS file names and archive paths, the psField / photoField / frame
  readers, one field's covariates and :func:`~npejax.surveys.sdss.build_bank`.
* :mod:`~npejax.surveys.download`: fetches those files from the SDSS DR17 archive (retries, resume).

The command is :mod:`npejax.sdss` (``python -m npejax.sdss download|build-bank``).
"""
