"""The inference network (paper Section 5) and its training.

* :mod:`~npejax.nn.inputs` -- input normalization (asinh image channels, background, PSF channels).
* :mod:`~npejax.nn.model` -- the YOLOv5-style CatalogNet, built from ``config.model``
  (:func:`~npejax.nn.model.from_config`).
* :mod:`~npejax.nn.posterior` -- the tile-factorized variational posterior (TFP on JAX) and its NLL.
* :mod:`~npejax.nn.state` -- the train state and Adam with the paper's learning-rate schedule.
* :mod:`~npejax.nn.steps` -- augmentation, train and eval steps (module-level, pure), jit with mesh shardings.
* :mod:`~npejax.nn.checkpoints` -- Orbax checkpoints of a workdir (closed on exit), loading one for prediction.
* :mod:`~npejax.nn.input_pipeline` -- the training data (simulated or cached), the validation set, and the feed
  of the train step (one batch, K batches or index rows of the set on the devices per jitted call).
* :mod:`~npejax.nn.preemption` -- stopping on time: SIGTERM, SIGUSR1 and ``train.time_limit_minutes``, agreed by
  every process; exit status 3.
* :mod:`~npejax.nn.train` -- the training loop (``train_and_evaluate``) in named pieces.
* :mod:`~npejax.nn.display` -- how an image is shown (asinh stretch, grey map) in TensorBoard and the report.
* :mod:`~npejax.nn.predictor` -- ``Predictor``: a network restored from a checkpoint, predicting tiles and
  catalogs from arrays (checked, padded, chunked for large images).

Reads data from :mod:`npejax.sim` (on the fly) or :mod:`npejax.datasets`; imports nothing from
:mod:`npejax.surveys`, :mod:`npejax.cli`, :mod:`npejax.cataloging` (images from files, the commands' flags,
the survey runner: the layer above) or :mod:`npejax.evaluation`. Within the package, imports run inputs,
posterior -> model, state -> steps, checkpoints, input_pipeline, preemption -> train; the predictor uses
checkpoints, model and inputs, not the training loop.
"""
