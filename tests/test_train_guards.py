"""What training refuses, and what it keeps safe (issue 11): a resume with another config, damaged
checkpoints, nonsense values, cached datasets that do not fit the config, a failed checkpoint save, a
checkpoint of another network; metrics.csv after a kill in the first save; TensorBoard events.

One tiny network is trained once (module fixture, one epoch); every other test reads it or a copy, or is
refused before any work, through the real command (``npejax.main.main(argv)`` in-process).
"""

import errno
import json
import os
import shutil
import struct
import types

import numpy as np
import pytest
import tensorboardX
from conftest import one_error_line
from tensorboardX.proto import event_pb2

from npejax import configuration
from npejax import datasets as data
from npejax import main as train_main
from npejax.nn import checkpoints, display, input_pipeline, inputs, train
from npejax.nn import model as model_lib
from npejax.nn import state as state_lib
from npejax.sim import pipeline

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

STALE_ROW = "epoch,step,train_nll,val_nll,learning_rate,images_per_s,seconds\n1,2,111.0,222.0,0.001,1.0,9.9\n"


def _snapshot(directory):
    """{relative path: (size, mtime_ns)} of every file under ``directory``."""
    out = {}
    for dirpath, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return out


def read_events(logdir):
    """{tag: {step: value}} of the scalars, and {tag: {step: PNG bytes}} of the images, in a tensorboardX
    log directory, read as TensorBoard does: the files in the order they were started, a ``SessionLog.START``
    at step s purging the events at steps >= s read before (tensorboardX's ``purge_step``). Records are
    TFRecords: length (uint64), its masked CRC, the Event proto, its masked CRC."""
    files = []
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name), "rb") as f:
            raw = f.read()
        events, pos = [], 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos : pos + 8])
            events.append(event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
        files.append(events)
    files.sort(key=lambda events: events[0].wall_time)
    scalars, images = {}, {}
    for events in files:
        for event in events:
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for table in (scalars, images):
                    for steps in table.values():
                        for step in [s for s in steps if s >= event.step]:
                            del steps[step]
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, {})[event.step] = value.image.encoded_image_string
                else:
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars, images


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    """A workdir trained one epoch (figure every epoch) after a run that was killed during its first
    checkpoint save: metrics.csv with an epoch-1 row and TensorBoard events of epoch 1, no checkpoint."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    workdir.mkdir()
    (workdir / "metrics.csv").write_text(STALE_ROW)
    with tensorboardX.SummaryWriter(str(workdir / train.TENSORBOARD_DIR), purge_step=1) as writer:
        writer.add_scalar("nll/val", 222.0, 1)
    config = tiny_config()
    config.train.num_epochs = 1
    config.train.figure_every = 1
    summary = train.train_and_evaluate(config, str(workdir))
    return workdir, config, summary


@pytest.fixture
def copy_of(tmp_path):
    def copy(workdir):
        target = tmp_path / "copy"
        shutil.copytree(workdir, target)
        return target

    return copy


@pytest.fixture
def run_main(config_path, tiny_flags, capsys):
    """``run_main(workdir, *flags)``: npejax.main in-process on the tiny config (one epoch, a figure every
    epoch, as the ``trained`` fixture); (exit code, stdout, stderr)."""

    def run(workdir, *extra):
        capsys.readouterr()
        code = train_main.main(
            [
                "npejax-train",
                "--config",
                config_path("cpu_small"),
                "--workdir",
                str(workdir),
                *tiny_flags(),
                "--config.train.num_epochs=1",
                "--config.train.figure_every=1",
                *extra,
            ]
        )
        out, err = capsys.readouterr()
        return code, out, err

    return run


# --- 5. metrics.csv, 12. TensorBoard ---------------------------------------------------------------


def test_fresh_start_after_a_kill_in_the_first_save_has_one_row_per_epoch(trained):
    workdir, _, summary = trained
    rows = (workdir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,2,") and "222.0" not in rows[1], rows
    assert float(rows[1].split(",")[3]) == summary["history"][0]["val_nll"]


def test_tensorboard_scalars_equal_metrics_csv_and_a_figure_is_written(trained):
    workdir, _, summary = trained
    scalars, images = read_events(workdir / train.TENSORBOARD_DIR)
    row = summary["history"][0]
    csv_row = dict(zip(*[line.split(",") for line in (workdir / "metrics.csv").read_text().split()]))
    assert set(scalars) == set(train.SCALARS)
    for tag, column in train.SCALARS.items():  # the stale epoch-1 value of the killed run is purged
        assert scalars[tag] == {1: pytest.approx(float(np.float32(csv_row[column])), rel=1e-7)}, tag
        assert float(csv_row[column]) == row[column]
    png = images["validation/image"][1]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_validation_figure_marks_the_true_sources(trained):
    _, config, summary = trained
    batch = pipeline.simulate_batch(pipeline.SimulationSpec.from_config(config, seed=5, batch_size=1), 0)
    assert batch["tile_has_source"][0].sum() >= 2
    empty = dict(batch, tile_has_source=np.zeros_like(batch["tile_has_source"]))
    net = model_lib.from_config(config)
    blue = []
    for b in (batch, empty):
        rgb = train.validation_figure(config, net, summary["normalizer"], b)(summary["state"], 1)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        blue.append(int(((rgb[..., 2] > 150) & (rgb[..., 0] < 80)).sum()))  # tab:blue circles: true sources
    assert blue[0] > blue[1] + 20, blue


def test_the_validation_image_is_grey_like_every_figure_brighter_is_lighter(trained):
    _, config, summary = trained
    batch = pipeline.simulate_batch(pipeline.SimulationSpec.from_config(config, seed=5, batch_size=1), 0)
    h, w = batch["images"].shape[1:]
    ramp = np.broadcast_to(np.linspace(-1.0, 20.0, w, dtype=np.float32), (1, h, w))  # faint left, bright right
    empty = dict(batch, images=np.ascontiguousarray(ramp), tile_has_source=np.zeros_like(batch["tile_has_source"]))
    net = model_lib.from_config(config)
    rgb = train.validation_figure(config, net, summary["normalizer"], empty)(summary["state"], 1)
    row = rgb[int(0.75 * rgb.shape[0])].astype(float)  # below the legend (upper right)
    image = (np.ptp(row, axis=1) < 8) & (row.mean(axis=1) < 250)  # grey pixels, not the white margin or a frame
    values = row[image].mean(axis=1)
    assert image.sum() > 100
    assert values[: values.size // 4].mean() < values[-values.size // 4 :].mean() - 100  # brighter pixel, lighter grey
    shown, vmin, vmax = display.asinh_stretch(ramp[0])
    assert display.CMAP == "gray" and np.all(np.diff(shown[0]) > 0) and vmin < vmax


# --- 2. checksums ----------------------------------------------------------------------------------


def test_checksums_are_recorded_and_a_clean_checkpoint_loads(trained, capfd):
    workdir, config, summary = trained
    for which in checkpoints.WHICH:
        directory = workdir / "checkpoints" / which / "1"
        recorded = json.loads((directory / checkpoints.CHECKSUM_FILE).read_text())["files"]
        assert set(recorded) == set(_snapshot(directory)) - {checkpoints.CHECKSUM_FILE}
        assert any(name.startswith("state/") for name in recorded) and "meta/metadata" in recorded
    loaded_config, variables, normalizer = checkpoints.load_network(str(workdir), "best")
    np.testing.assert_array_equal(variables["params"]["Conv_0"]["kernel"], summary["state"].params["Conv_0"]["kernel"])
    assert normalizer == summary["normalizer"] and loaded_config.model.width == config.model.width
    assert capfd.readouterr().err == ""


def test_a_flipped_byte_is_refused_naming_the_file(trained, copy_of, run_main):
    workdir = copy_of(trained[0])
    state_dir = workdir / "checkpoints" / "latest" / "1" / "state"
    victim = max((p for p in state_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    with pytest.raises(checkpoints.CheckpointError, match=f"checkpoint file {victim} is damaged"):
        checkpoints.load_network(str(workdir), "latest")
    checkpoints.load_network(str(workdir), "best")  # the other checkpoint is intact

    before = _snapshot(workdir)
    code, out, err = run_main(workdir, "--config.train.num_epochs=2")  # resuming reads the same file
    assert code == 2 and f"checkpoint file {victim} is damaged" in one_error_line(err), err
    assert _snapshot(workdir) == before and "epoch" not in out


def test_a_checkpoint_without_checksums_loads_with_a_warning(trained, copy_of, capfd):
    workdir = copy_of(trained[0])
    (workdir / "checkpoints" / "best" / "1" / checkpoints.CHECKSUM_FILE).unlink()
    capfd.readouterr()
    checkpoints.load_network(str(workdir), "best")
    err = capfd.readouterr().err
    assert err.startswith("warning: checkpoint") and "unverified" in err and len(err.splitlines()) == 1


def test_a_damaged_checksum_file_is_refused(trained, copy_of):
    workdir = copy_of(trained[0])
    (workdir / "checkpoints" / "best" / "1" / checkpoints.CHECKSUM_FILE).write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="checksum file .*npejax-sha256.json is damaged"):
        checkpoints.load_network(str(workdir), "best")


# --- 1. resuming with another config, 8. a checkpoint of another network ----------------------------


@pytest.mark.parametrize(
    "flag, difference",
    [
        ("--config.model.variant=single_field", "model.variant: 'psf_aware' -> 'single_field'"),
        ("--config.fields.prior=one", "fields.prior: 'many' -> 'one'"),
        ("--config.model.dtype=bfloat16", "model.dtype: 'float32' -> 'bfloat16'"),
        ("--config.model.width=8", "model.width: 4 -> 8"),
    ],
)
def test_resume_with_another_config_is_refused(trained, run_main, flag, difference):
    workdir = trained[0]
    before = _snapshot(workdir)
    config_json = (workdir / "config.json").read_bytes()
    code, out, err = run_main(workdir, flag)
    line = one_error_line(err)
    assert code == 2 and f"workdir {workdir} holds a run (epoch 1) trained with another config" in line, err
    assert f"differences (checkpoint -> now): {difference}." in line, line
    assert (workdir / "config.json").read_bytes() == config_json and _snapshot(workdir) == before
    assert "Traceback" not in out + err and "Event loop is closed" not in out + err


def test_resume_with_another_training_length_is_accepted(trained, copy_of, run_main, tiny_config):
    workdir = copy_of(trained[0])
    _, meta = checkpoints.read_meta(str(workdir))
    config = tiny_config()
    config.train.figure_every = 1
    for key, value in (("num_epochs", 7), ("patience", 2), ("progress", True)):
        config.train[key] = value
        assert train.check_resume(config, str(workdir))[0] == 1
    config.train.batch_size = 16
    assert configuration.saved_differences(meta["config"], config) == ["train.batch_size: 8 -> 16"]

    # the command: nothing left to train at num_epochs=1, said so; another patience is fine
    code, out, err = run_main(workdir, "--config.train.patience=4")
    assert code == 0, err
    assert "Resuming after epoch 1" in out and "nothing to train: 1 epochs done, train.num_epochs=1" in out


def test_a_checkpoint_of_another_network_is_one_line(trained, copy_of, tiny_config, capfd):
    workdir = copy_of(trained[0])
    config = tiny_config()
    config.model.width = 8
    abstract = state_lib.abstract_state(config, model_lib.from_config(config))
    capfd.readouterr()
    with checkpoints._existing_manager(str(workdir / "checkpoints" / "best")) as manager:
        with pytest.raises(checkpoints.CheckpointError) as info:
            checkpoints.restore(manager, abstract, where=f"workdir {workdir}")
    text = str(info.value)
    assert text.startswith(f"workdir {workdir} holds another network than the config's model: ") and "\n" not in text
    assert "in the checkpoint" in text and len(text) < 400
    # predict's path: config.json changed to another width
    saved = json.loads((workdir / "config.json").read_text())
    saved["model"]["width"] = 8
    (workdir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(
        checkpoints.CheckpointError,
        match=r"config.json differs from the config checkpoint .* "
        r"was trained with \(checkpoint -> config.json\): "
        r"model.width: 4 -> 8$",
    ):
        checkpoints.load_network(str(workdir), "best")
    err = capfd.readouterr().err
    assert "Event loop is closed" not in err and "Traceback" not in err and "TensorStore" not in err


def test_a_config_saved_before_later_keys_loads_with_their_old_values(trained, copy_of):
    """config.json written before posterior.*, model.stem_kernel, model.aperture_flux and posterior.decode existed:
    filled in with the values that reproduce what it trained (configuration.KEYS), so it loads; a changed value is
    still refused."""
    workdir = copy_of(trained[0])
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["stem_kernel"] == 5 and saved["posterior"]["context"] == "checkerboard"
    # an old independent-tile network's config: no posterior section, no stem_kernel
    old = json.loads(json.dumps(saved))
    del old["model"]["stem_kernel"], old["model"]["aperture_flux"], old["posterior"]
    upgraded = configuration.upgrade(old)
    assert upgraded["model"]["stem_kernel"] == 5 and upgraded["model"]["aperture_flux"] is False
    assert upgraded["posterior"] == {"context": "independent", "colours": 2, "context_width": 16, "decode": "tile"}
    old["posterior"] = {"context": "checkerboard", "colours": 4, "context_width": 16}  # before posterior.decode
    assert configuration.upgrade(old)["posterior"]["decode"] == "tile"
    assert "stem_kernel" not in old["model"]  # the argument is left as it was
    assert configuration.upgrade(saved) == saved and configuration.upgrade({}) == {}
    del old["train"]["time_limit_minutes"]  # before training stopped on time: no limit
    assert configuration.upgrade(old)["train"]["time_limit_minutes"] == 0.0
    # this workdir's config.json without stem_kernel loads and predicts with the 5 x 5 stem it was trained with
    del saved["model"]["stem_kernel"]
    (workdir / "config.json").write_text(json.dumps(saved))
    config, variables, _ = checkpoints.load_network(str(workdir), "best")
    assert config.model.stem_kernel == 5 and model_lib.from_config(config).stem_kernel == 5
    assert variables["params"]["ConvBlock_0"]["Conv_0"]["kernel"].shape[:2] == (5, 5)
    saved["model"]["stem_kernel"] = 3
    (workdir / "config.json").write_text(json.dumps(saved))
    with pytest.raises(checkpoints.CheckpointError, match=r"model.stem_kernel: 5 -> 3$"):
        checkpoints.load_network(str(workdir), "best")


# --- 4, 6. nonsense values, refused before the workdir exists ---------------------------------------


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.train.images_per_epoch=4", "train.images_per_epoch=4 is smaller than train.batch_size=8"),
        ("--config.train.images_per_epoch=0", "train.images_per_epoch=0 is smaller than train.batch_size=8"),
        ("--config.train.num_epochs=0", "train.num_epochs=0: must be >= 1 (0 epochs: nothing to train)"),
        ("--config.train.batch_size=0", "train.batch_size=0: must be >= 1"),
        ("--config.train.eval_batch_size=0", "train.eval_batch_size=0: must be >= 1"),
        (
            "--config.train.eval_batch_size=32",
            "train.eval_batch_size=32 is larger than the validation set (data.num_val=16)",
        ),
        ("--config.train.patience=0", "train.patience=0: must be >= 1"),
        ("--config.train.figure_every=-1", "train.figure_every=-1: must be >= 0"),
        ("--config.train.learning_rate=-0.1", "train.learning_rate=-0.1: must be a positive number"),
        ("--config.train.time_limit_minutes=-1", "train.time_limit_minutes=-1.0: must be >= 0 (0: no time limit)"),
        ("--config.model.variant=psf_blind", "model.variant must be one of"),
        ("--config.model.dtype=float16", "model.dtype must be 'float32' or 'bfloat16', got 'float16'"),
        ("--config.fields.prior=all", "fields.prior must be one of ('many', 'one'), got 'all'"),
        ("--config.tile_size=8", "model stages stride 4 must equal tile_size 8"),
        ("--config.train.learning_rat=0.1", "learning_rat"),
        ("--config.data.train_dir=/nonexistent/train", "/nonexistent/train does not exist"),
    ],
)
def test_bad_values_are_one_line_and_leave_no_workdir(tmp_path, run_main, flag, message):
    workdir = tmp_path / "new" / "run"
    code, out, err = run_main(workdir, flag)
    assert code == 2 and message in one_error_line(err), err
    assert not (tmp_path / "new").exists() and out == ""


def test_batch_sizes_must_be_multiples_of_the_devices(tmp_path, run_main, monkeypatch, tiny_config):
    monkeypatch.setattr(train.jax, "devices", lambda: ["cpu:0", "cpu:1", "cpu:2"])  # every process's devices
    code, _, err = run_main(tmp_path / "run")
    assert code == 2 and "train.batch_size=8 must be a multiple of the 3 devices (e.g. 6 or 9)" in err, err
    assert not (tmp_path / "run").exists()
    config = tiny_config()
    config.train.batch_size = 6
    with pytest.raises(ValueError, match=r"train.eval_batch_size=8 must be a multiple of the 3 devices"):
        configuration.validate(config, num_devices=3)
    config.train.eval_batch_size = 3
    configuration.validate(config, num_devices=3)


def test_a_workdir_under_a_file_is_refused(tmp_path, run_main):
    (tmp_path / "file").write_text("x")
    code, _, err = run_main(tmp_path / "file" / "run")
    assert code == 2 and "is a file" in one_error_line(err), err


# --- 6. a checkpoint that cannot be saved ----------------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    """Epochs that do not train or simulate (a fixed row; the state as initialized): the save is under test."""

    def quick_epoch(config, data, state, train_step, eval_step, batches, val_batches, key, epoch, done=None, stop=None):
        row = dict(
            epoch=epoch + 1,
            step=int(state.step),
            train_nll=1.0,
            val_nll=2.0,
            learning_rate=1e-3,
            images_per_s=1.0,
            seconds=0.1,
        )
        return state, row, 1.0, 2.0

    rng = np.random.default_rng(0)
    normalizer = inputs.Normalizer.fit(rng.normal(size=(2, 8, 8)), np.ones((2, 8, 8)), np.ones((2, 6)))
    monkeypatch.setattr(train, "run_epoch", quick_epoch)
    monkeypatch.setattr(input_pipeline, "fit_normalizer", lambda config, data: normalizer)
    monkeypatch.setattr(input_pipeline, "validation_batches", lambda config, data, sharding: [])


def test_a_failed_checkpoint_save_stops_at_that_epoch_in_one_line(tmp_path, run_main, monkeypatch, no_training):

    wait = checkpoints.ocp.CheckpointManager.wait_until_finished

    def disk_full(self):  # the write ends, then its error surfaces (as Orbax's asynchronous errors do)
        wait(self)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "wait_until_finished", disk_full)
    code, out, err = run_main(tmp_path / "run", "--config.train.num_epochs=3", "--config.train.figure_every=0")
    line = one_error_line(err)
    assert code == 2 and line == (
        f"error: cannot save the checkpoint of epoch 1 in {tmp_path}/run/checkpoints/"
        "latest: [Errno 28] No space left on device"
    ), err
    assert out.count("train NLL") == 1  # stopped at the epoch whose save failed


def test_too_little_free_space_is_refused_before_the_save(tmp_path, run_main, monkeypatch, no_training):
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    code, out, err = run_main(tmp_path / "run", "--config.train.figure_every=0")
    assert code == 2 and "cannot save the checkpoint of epoch 1" in one_error_line(err)
    assert "MiB are free on that disk" in err and not any((tmp_path / "run" / "checkpoints" / "latest").iterdir())


# --- 3. cached datasets checked against the config --------------------------------------------------


@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_config):
    """Tiny cached datasets: train, val and test splits of the tiny config, a 'train' split of 40 x 40
    images, and a 'train' split simulated from the one-field prior (8 images each)."""
    root = tmp_path_factory.mktemp("cached")
    config = tiny_config()
    spec = pipeline.SimulationSpec.from_config(config, seed=1, batch_size=8)
    for split in ("train", "val", "test"):
        data.write_dataset(spec, root / split, 8, split, num_workers=0, progress=False)
    small = tiny_config()
    small.image_size = 40
    data.write_dataset(
        pipeline.SimulationSpec.from_config(small, seed=1, batch_size=8),
        root / "small",
        8,
        "train",
        num_workers=0,
        progress=False,
    )
    one = tiny_config()
    one.fields.prior = "one"
    data.write_dataset(
        pipeline.SimulationSpec.from_config(one, seed=1, batch_size=8),
        root / "one",
        8,
        "train",
        num_workers=0,
        progress=False,
    )
    return root


@pytest.mark.parametrize(
    "key, name, message",
    [
        ("train_dir", "test", "it is the 'test' split, expected the 'train' split"),
        ("val_dir", "train", "it is the 'train' split, expected the 'val' split"),
        ("train_dir", "small", "its images are 40 x 40 pixels, the config's image_size is 80"),
        ("train_dir", "one", "it was simulated with fields.prior='one', the config has 'many'"),
    ],
)
def test_a_dataset_that_does_not_fit_the_config_is_refused(tmp_path, cached, run_main, key, name, message):
    code, _, err = run_main(tmp_path / "run", f"--config.data.{key}={cached / name}")
    line = one_error_line(err)
    assert code == 2 and f"data.{key} {cached / name} does not fit the config: " in line and message in line, err
    assert not (tmp_path / "run").exists()


def test_eval_batch_size_larger_than_the_cached_validation_set(tmp_path, cached, run_main):
    code, _, err = run_main(
        tmp_path / "run", f"--config.data.val_dir={cached / 'val'}", "--config.train.eval_batch_size=16"
    )
    assert code == 2 and (
        f"train.eval_batch_size=16 is larger than the validation set data.val_dir {cached / 'val'} (8 images)"
    ) in one_error_line(err), err


def test_the_normalizer_is_fitted_on_the_cached_training_set(cached, tiny_config):
    config = tiny_config()
    config.data.train_dir = str(cached / "train")
    config.data.val_dir = str(cached / "val")
    configuration.validate(config, num_devices=1)
    setup = input_pipeline.setup_data(config, 1)
    fitted = input_pipeline.fit_normalizer(config, setup)
    ds = data.load(cached / "train")
    first = ds[0:8]  # normalizer_images=16 > the 8 images there: all of them
    assert fitted == inputs.Normalizer.fit(first["images"], first["background"], first["psf_params"])
    config.data.train_dir = ""
    simulated = input_pipeline.fit_normalizer(config, input_pipeline.setup_data(config, 1))
    assert simulated.quantiles != fitted.quantiles


def test_early_stopping_waits_for_the_learning_rate_decay(tiny_config):
    """Patience runs out before the decay: training goes on; after an epoch at the decayed rate it stops."""
    config = tiny_config()
    config.train.patience, config.train.lr_decay_epoch = 2, 5
    progress = train.Progress()
    stops = []
    for epoch, val in enumerate([10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0], start=1):
        progress.update(dict(epoch=epoch), val)
        stops.append(train.stops_early(config, progress))
    assert stops == [False, False, False, False, False, True, True]
    progress = train.Progress()
    for epoch, val in enumerate([10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0], start=1):  # improving: never stops
        progress.update(dict(epoch=epoch), val)
        assert not train.stops_early(config, progress)
