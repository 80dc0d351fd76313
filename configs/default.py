"""Shared defaults for npejax experiments (paper protocol where the paper gives a number).

Experiment configs import this module and change only what differs. Every key is documented here;
units in the comments. Override any key on the command line: ``--config.simulator.num_workers=4``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.image_size = 80  # pixels (square images)
    config.tile_size = 4  # pixels; the tile grid is image_size / tile_size on a side

    # Catalog prior, paper Table 1 (npejax.sim.prior.CatalogPrior, which has no defaults of its own: every
    # key is required). Galaxy flux scale 3.925 nmgy, not the table's 3.29: see SPEC.md and the CatalogPrior
    # docstring.
    config.prior = ml_collections.ConfigDict()
    config.prior.sources_per_pixel = 6.25e-4  # Poisson rate; 4.0 sources per 80 x 80 image
    config.prior.max_sources = 32  # padding of the full catalog; an image with more raises
    config.prior.prob_galaxy = 0.514
    # Star flux: truncpareto b, c, loc, scale (nmgy); flux in [0.632, 726777] nmgy, r 23.0 down to 7.85.
    # c = 613314, not the 1000 printed in Table 1: the paper's experiments used 613314 (the authors' base
    # configuration), and only that value reproduces the paper's equal-count r cut-offs (17.777, 19.101, ...;
    # c = 1000 puts the first 0.42 mag too faint and stops stars at r 14.8). See SPEC.md and CatalogPrior.
    config.prior.star_flux = (0.469, 613314.0, -0.553, 1.185)
    config.prior.galaxy_flux = (1.561, 1000.0, -3.29, 3.925)
    config.prior.disk_a = (0.393, 0.837, 4.432)  # gamma shape, loc, scale (arcsec, semi-major)
    config.prior.bulge_a = (0.393, 0.419, 2.216)
    config.prior.min_axis_ratio = 0.01

    # Field covariates: PSF and background from a bank of survey fields.
    config.fields = ml_collections.ConfigDict()
    # "synthetic": embedded, 500 SYNTHETIC SDSS-like fields, one PSF family (the shipped networks' bank);
    # "survey": embedded, 500 SYNTHETIC fields whose six PSF parameters and sky span the SDSS r band
    # (npejax.sim.survey_bank); or a .npz path (e.g. real fields from python -m npejax.sdss build-bank)
    config.fields.bank = "synthetic"
    config.fields.prior = "many"  # "many": uniform over the bank (p_many); "one": reference field (p_one)

    # Renderer (npejax.sim.render.RenderConfig; no defaults of its own: every key is required).
    config.render = ml_collections.ConfigDict()
    config.render.pixel_scale_arcsec = 0.396
    config.render.noise = "gaussian"  # "gaussian" N(lambda, lambda) as in the paper, "poisson", "none"
    config.render.psf_trunc_pixels = 25.0  # Moffat term truncation radius
    config.render.max_stamp_size = 256  # pixels; largest periodic stamp for one source
    config.render.method = "kspace"  # "kspace" (fast) or "drawimage" (one GalSim drawImage per source)
    config.render.folding_threshold = 1e-2  # GalSim GSParams
    config.render.maxk_threshold = 3e-3

    # Artifacts of real SDSS frames (npejax.sim.artifacts, whose docstring gives each number's source or says it is an
    # assumption): each a switch and a rate, all off (the paper's forward model; configs saved before this section
    # simulated none). With any on, a batch also holds `mask` [B, H, W] bool (pixels a frame's mask flags: saturated,
    # interpolated, cosmic ray, no data) and `artifact_bits` [B, H, W] uint8 (which artifact touched each pixel).
    config.artifacts = ml_collections.ConfigDict()
    config.artifacts.cosmic_rays = ml_collections.ConfigDict()
    config.artifacts.cosmic_rays.enabled = False  # residual charge tracks, added before the noise
    config.artifacts.cosmic_rays.rate_per_mpix = 9.3  # Poisson mean of hits per 1e6 pixels per 53.9 s exposure
    config.artifacts.cosmic_rays.length = (1.0, 8.0)  # track length, pixels, uniform
    config.artifacts.cosmic_rays.electrons = (100.0, 5000.0)  # residual charge per track pixel, log-uniform
    config.artifacts.cosmic_rays.flagged = 0.5  # fraction the pipeline finds (flagged CR in `mask`)
    config.artifacts.saturation = ml_collections.ConfigDict()
    config.artifacts.saturation.enabled = False  # clip at the full well, bleed the excess along the column
    config.artifacts.saturation.full_well_dn = 25_000.0  # DN above bias (x the field's gain): r 14 saturates
    config.artifacts.spikes = ml_collections.ConfigDict()
    config.artifacts.spikes.enabled = False  # four diffraction spikes on stars brighter than max_mag
    config.artifacts.spikes.max_mag = 17.0  # r magnitude
    config.artifacts.spikes.flux_fraction = 0.005  # of the star's flux in its four spikes
    config.artifacts.spikes.angle_deg = 0.0  # along frame rows and columns (SDSS's spider), counterclockwise from +x
    config.artifacts.spikes.core_radius = 3.0  # pixels; the spikes start here, falling as r^-2
    config.artifacts.bad_columns = ml_collections.ConfigDict()
    config.artifacts.bad_columns.enabled = False  # columns interpolated from their neighbours (flagged INTERP)
    config.artifacts.bad_columns.per_column = 1e-3  # probability per image column
    config.artifacts.satellite = ml_collections.ConfigDict()
    config.artifacts.satellite.enabled = False  # straight trails with the PSF core's width, added before the noise
    config.artifacts.satellite.rate = 0.002  # Poisson mean of trails per image
    config.artifacts.satellite.nmgy_per_pixel = (0.05, 5.0)  # trail flux per pixel of length, log-uniform
    config.artifacts.masked = ml_collections.ConfigDict()
    config.artifacts.masked.enabled = False  # blocks of pixels without data (flagged in `mask`)
    config.artifacts.masked.rate = 0.01  # Poisson mean of blocks per image
    config.artifacts.masked.size = (4, 24)  # block sides, pixels, uniform
    # Image value of masked pixels: "zero" (the stand-in that networks without a mask input read) or "nan" (as a
    # frame's missing data; a network then needs the mask)
    config.artifacts.masked.fill = "zero"

    # On-the-fly simulator (npejax.sim.pipeline.Simulator); also renders the datasets of npejax.simulate and the test
    # sets of npejax.evaluate and npejax.experiment. A batch's images do not depend on the number of workers.
    config.simulator = ml_collections.ConfigDict()
    config.simulator.num_workers = 2  # worker processes; 0: none (rendered in a background thread)
    config.simulator.prefetch = 8  # batches rendered ahead
    # Renderer: "galsim" (npejax.sim.render, in the worker processes) or "jax" (npejax.sim.jax_render on JAX's default
    # device, in the simulator's own thread: num_workers does not apply). The same catalogs, fields and crops for
    # a seed; the JAX noise comes from jax.random (benchmarks/RESULTS.md, "JAX renderer against GalSim").
    config.simulator.backend = "galsim"

    # Inference network (npejax.nn.model.from_config builds CatalogNet, which has no defaults of its own): 48
    # conv-BN-SiLU blocks at this size.
    config.model = ml_collections.ConfigDict()
    config.model.variant = "psf_aware"  # "psf_aware", "psf_unaware" or "single_field" (inputs)
    config.model.width = 64  # channels of the first stage
    config.model.stem_blocks = 3
    # Kernel of the first stem block (odd; the other blocks are 3 x 3). It runs at full resolution on every input
    # channel: 5 x 5 on 21 channels is 46% of cpu_small's conv FLOPs, yet 3 x 3 trains only 4% faster on the CPU.
    config.model.stem_kernel = 5
    # Add ln(softplus(A / f) / ln 2) to each tile's log-flux location, A the sum of the sky-subtracted pixels
    # over its 3 x 3 tiles, f learned (npejax.nn.model, "Aperture flux"): bright fluxes keep a slope of 1
    # beyond those seen in training. Off: the paper's network.
    config.model.aperture_flux = False
    # One more input channel, 1 where a pixel carries no information (NaN or infinite: missing data; in training the
    # masked blocks of artifacts.masked with fill "nan"; in prediction a user's NaN pixels), those pixels set to 0
    # (npejax.nn.inputs, "Mask channel"). Off: the paper's inputs, and NaN pixels are refused in training and set to 0,
    # unannounced to the network, in prediction.
    config.model.mask_channel = False
    config.model.stages = ((1, 3, 1), (2, 3, 2), (4, 3, 2), (4, 3, 1), (4, 2, 1))  # (width mult, bottlenecks, stride)
    config.model.dtype = "float32"  # or "bfloat16" (activations; parameters and loss stay float32)

    # Posterior over the tile catalog (npejax.nn.model, npejax.nn.posterior): the same eight-parameter family
    # per tile; "independent" tiles (paper Table 2) or "checkerboard": q(z) = prod_k q(z_k | x, z_<k) over
    # interleaved colours of tiles, each colour also seeing the catalog decided for the earlier ones (SPEC.md
    # "Tile boundaries"); trained with the true catalog as context, predicted colour by colour.
    config.posterior = ml_collections.ConfigDict()
    config.posterior.context = "independent"  # "independent" or "checkerboard"
    config.posterior.colours = 2  # checkerboard colours: 2 ((h + w) % 2) or 4 (each 2 x 2 block of tiles)
    config.posterior.context_width = 16  # channels of the context network (checkerboard)
    # How a catalog is read from the posterior (npejax.nn.posterior.merge_split_sources; prediction only):
    # "tile": each tile on when its probability (conditional, for the checkerboard) is above 0.5, so a source
    # split over the tiles around a corner, each below 0.5, is missed; "group": also a detection in the most
    # probable tile of any 2 x 2 window decoded empty whose P(no source) = prod (1 - p) is below 0.5.
    config.posterior.decode = "group"

    # Training (paper Section 6): Adam 1e-3, x0.1 after epoch 32 of 50, early stopping.
    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 32  # global; a multiple of the number of local devices
    config.train.eval_batch_size = 64
    config.train.num_epochs = 50
    # Images per epoch when training on the fly (steps = images_per_epoch // batch_size, so a larger batch keeps
    # the epoch's images): the paper's 210k training images. With data.train_dir an epoch is one pass over it.
    config.train.images_per_epoch = 210_000
    config.train.learning_rate = 1e-3
    config.train.lr_decay = 0.1
    config.train.lr_decay_epoch = 32
    # Exponential moving average of the parameters and batch-norm statistics, decay per step (npejax.nn.state):
    # validation, the best checkpoint and prediction use the averages. 0: none (the paper's).
    config.train.ema_decay = 0.0
    config.train.patience = 10  # epochs without validation improvement before stopping (>= 1)
    config.train.augment = True  # random 90-degree rotations and flips
    config.train.normalizer_images = 512  # training images used for the input statistics
    config.train.progress = True  # progress bar
    # A validation figure (the first validation image with its true sources and the network's detections) in
    # WORKDIR/tensorboard every figure_every epochs; 0: never. Losses, learning rate and images/s: every epoch.
    config.train.figure_every = 5
    # Train steps per jitted call (>= 1): K > 1 runs K steps in one lax.scan, so that Python's dispatch does not
    # bound the step rate of a fast accelerator; the same states and losses as K calls (the epoch's last call
    # runs the remaining steps_per_epoch % K, a second compile). K batches are on the devices at once. On a CPU the
    # K steps are K straight-line copies (compiled about K times longer), which still ran 1.35x more images/s than
    # K = 1 for cpu_small on the 2-core VM (benchmarks/input_paths.py, batch 16; RESULTS.md).
    config.train.steps_per_dispatch = 1
    # Minutes after which training saves the step it reached (mid-epoch too) and exits with status 3, to be
    # resumed by the same command (npejax.nn.preemption; SIGTERM and SIGUSR1 do the same: Slurm's time-limit
    # warning and preemption); 0: no limit. Measured from the start of training (the process's): set it a few
    # minutes below a job's time limit. May differ when resuming.
    config.train.time_limit_minutes = 0.0

    # Dataset sizes per split (paper: 210k / 30k / 42k images): npejax.simulate's default --num-images, the
    # validation set simulated when there is no data.val_dir, and the test set of each prior that npejax.experiment
    # simulates and evaluates on.
    config.data = ml_collections.ConfigDict()
    config.data.num_train = 210_000
    config.data.num_val = 30_000
    config.data.num_test = 42_000
    config.data.shard_size = 1024  # images per cached shard
    config.data.train_dir = ""  # cached training set (npejax.simulate); empty: simulate on the fly
    config.data.val_dir = ""  # cached validation set; empty: simulate num_val images once
    # Hold the cached training set (data.train_dir or simulate_first's) on the devices: its images and background
    # [N, H, W] float32, psf_params [N, 6] and tile targets, replicated on every device (about 57 KB per 80 x 80
    # image with tile_size 4: 12 GB per device for the paper's 210k), put there once; every epoch's shuffled
    # batches (the same as from the host) are gathered on the devices. For a GPU whose memory holds the set (refused
    # when it would take more than 80% of a device's memory, where the backend reports it).
    config.data.on_device = False
    # Simulate num_train training and num_val validation images into WORKDIR/data/{train,val} before training
    # (resumable), then train from them: on a CPU the cores render first and train afterwards, instead of
    # sharing every step with the simulator (npejax.nn.input_pipeline.simulate_first).
    config.data.simulate_first = False
    # Worker processes that render simulate_first's images; -1: one per CPU; 0, as for simulator.num_workers: none
    # (rendered in a background thread). The images do not depend on it.
    config.data.simulate_workers = -1

    # Evaluation (paper Section 7 and Appendix A; npejax.evaluation.settings.EvalSettings, which has no defaults of its
    # own). Read by npejax.experiment (config.network.eval; its test sets have data.num_test images) and by
    # npejax.evaluate (from --config, else the first --workdir's config.json), whose flags override each key.
    config.eval = ml_collections.ConfigDict()
    config.eval.num_bootstrap = 200  # bootstrap resamples of the test images for the 1-sigma bands
    config.eval.num_bins = (
        10  # equal-count magnitude (and SNR) bins; the paper's reference cut-offs are always reported
    )
    config.eval.ceiling_galaxies = 200  # galaxies per bin for the r-band accuracy ceiling (15-30 ms each); 0: none
    config.eval.baseline = True  # Source Extractor (sep) on the same images with the known background
    config.eval.snr = True  # metrics by signal-to-noise ratio (Appendix A)
    config.eval.seed = 0  # of the bootstrap resamples and of the ceiling's galaxies

    # --- Many hosts: JAX's multi-process runtime (npejax.nn.distributed) ----------------------------------------
    # One process per GPU (or per node), all running the same command; each feeds its share of every global batch.
    # These keys are never compared when resuming or predicting (each process has its own process_id).
    config.distributed = ml_collections.ConfigDict()
    # "auto": call jax.distributed.initialize() when a key below is set or the environment says so
    # (JAX_COORDINATOR_ADDRESS; a Slurm step with SLURM_NTASKS > 1; Open MPI with OMPI_COMM_WORLD_SIZE > 1);
    # "true": always (JAX then detects the cluster: Slurm, Open MPI, Cloud TPU, ...); "false": never (one process).
    config.distributed.enabled = "auto"
    config.distributed.coordinator_address = ""  # "host:port" of process 0; empty: JAX_COORDINATOR_ADDRESS or detected
    config.distributed.num_processes = -1  # processes in all; -1: detected (e.g. SLURM_NTASKS)
    config.distributed.process_id = -1  # this process, 0 .. num_processes - 1; -1: detected (e.g. SLURM_PROCID)
    # Devices this process uses, e.g. "0,1,2,3" for one process per 4-GPU node; empty: JAX's default (under
    # Slurm or Open MPI the task's local id, i.e. one GPU per process; otherwise every local device).
    config.distributed.local_device_ids = ""
    config.distributed.timeout_s = 300  # seconds to wait for every process to join the coordinator
    return config
