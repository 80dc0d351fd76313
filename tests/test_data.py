"""Cached datasets: exact round trip, resume after a crash, refusal to mix datasets, lazy loading, batches."""

import dataclasses
import json
import mmap
import os
import shutil

import numpy as np
import pytest

from configs import default  # the repository root is on sys.path (conftest.py)
from npejax import datasets, io, schema
from npejax.datasets import format as dataset_format
from npejax.datasets import writer
from npejax.sim import fields, pipeline

pytestmark = pytest.mark.fast  # the whole file is in the fast tier

NUM_IMAGES, SHARD_SIZE = 10, 4  # shards of 4, 4 and 2 images


@pytest.fixture(scope="module")
def spec():
    return pipeline.SimulationSpec.from_config(
        default.get_config(), seed=123, batch_size=SHARD_SIZE, bank=fields.load_bank()
    )


@pytest.fixture(scope="module")
def written(spec, tmp_path_factory):
    """An uninterrupted run; tests that change a dataset work on a copy."""
    out = tmp_path_factory.mktemp("datasets") / "val"
    report = datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    assert report.rendered_shards == (0, 1, 2) and report.rendered_images == NUM_IMAGES
    return str(out)


@pytest.fixture(scope="module")
def expected(spec):
    """The simulator's own batches, truncated to NUM_IMAGES."""
    batches = [pipeline.simulate_batch(spec, i) for i in range(3)]
    return {key: np.concatenate([b[key] for b in batches])[:NUM_IMAGES] for key in batches[0]}


def _copy(written, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(written, dst)
    return str(dst)


def _assert_equal(a, b):
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _temporaries(directory):
    return [
        name for name in os.listdir(directory) if name.startswith(dataset_format.TMP_PREFIX) or io.is_temporary(name)
    ]


class _Recorder(pipeline.Simulator):
    """Simulator that records which batches it was asked for."""

    calls: list = []

    def __init__(self, spec, *args, **kwargs):
        super().__init__(spec, *args, **kwargs)
        _Recorder.calls.append((self.start, self.num_batches))


class _Crash(pipeline.Simulator):
    """Simulator that fails after handing over one batch (a crash in the middle of a run)."""

    def __next__(self):
        if getattr(self, "_handed", 0) >= 1:
            raise RuntimeError("simulated crash")
        self._handed = getattr(self, "_handed", 0) + 1
        return super().__next__()


# --- round trip --------------------------------------------------------------------------------------


def test_round_trip_equals_simulate_batch(spec, written, expected):
    ds = datasets.load(written)
    assert len(ds) == NUM_IMAGES and ds.num_shards == 3
    assert set(ds.keys) == set(expected) >= {*schema.IMAGE_KEYS, "n_sources", *schema.CATALOG_KEYS, *schema.TILE_KEYS}
    _assert_equal(ds[:], expected)
    for i, count in enumerate((4, 4, 2)):
        batch = pipeline.simulate_batch(spec, i)
        _assert_equal({k: np.asarray(v) for k, v in ds.shard(i).items()}, {k: v[:count] for k, v in batch.items()})


def test_manifest(spec, written):
    with open(os.path.join(written, "manifest.json")) as f:
        m = json.load(f)
    assert m["format"] == "npejax-dataset" and m["complete"] is True
    assert (m["split"], m["seed"], m["num_images"], m["shard_size"]) == ("val", 123, NUM_IMAGES, SHARD_SIZE)
    assert m["shards"] == [
        {"name": "shard-00000", "count": 4},
        {"name": "shard-00001", "count": 4},
        {"name": "shard-00002", "count": 2},
    ]
    assert m["image_shape"] == [80, 80] and m["tile_size"] == 4
    assert m["keys"]["images"] == {"dtype": "float32", "shape": [80, 80]}
    assert m["keys"]["tile_has_source"] == {"dtype": "bool", "shape": [20, 20]}
    assert m["bank"]["source"] == "synthetic" and m["bank"]["synthetic"] is True
    assert m["bank"]["num_fields"] == len(spec.bank) and len(m["bank"]["sha256"]) == 64
    assert m["bank"]["reference"] == spec.bank.names[spec.bank.reference]
    assert m["spec"]["prior"]["sources_per_pixel"] == spec.prior.sources_per_pixel
    assert m["npejax_version"] and m["created"] and m["completed"]
    assert m["identity"] == dataset_format.dataset_digest(m) and len(m["identity"]) == 64
    with open(os.path.join(written, "shard-00001", "shard.json")) as f:
        shard = json.load(f)
    assert shard == dict(format="npejax-dataset", split="val", seed=123, index=1, count=4, dataset=m["identity"])
    assert sorted(os.listdir(written)) == [".npejax-lock", "manifest.json", "shard-00000", "shard-00001", "shard-00002"]


def test_config_recorded(spec, tmp_path):
    import ml_collections

    config = ml_collections.ConfigDict({"seed": 7, "data": {"shard_size": 4}})
    datasets.write_dataset(spec, tmp_path / "d", 2, "test", config=config, num_workers=0, progress=False)
    assert datasets.load(tmp_path / "d").manifest["config"] == {"seed": 7, "data": {"shard_size": 4}}


def test_worker_processes_give_the_same_shards(spec, written, tmp_path):
    datasets.write_dataset(spec, tmp_path / "w", NUM_IMAGES, "val", num_workers=1, progress=False)
    _assert_equal(datasets.load(tmp_path / "w")[:], datasets.load(written)[:])


def test_shard_size_argument_overrides_spec_batch_size(spec, tmp_path):
    datasets.write_dataset(
        dataclasses.replace(spec, batch_size=99), tmp_path / "s", 6, "val", shard_size=3, num_workers=0, progress=False
    )
    ds = datasets.load(tmp_path / "s")
    assert ds.num_shards == 2 and ds.shard_size == 3
    _assert_equal(
        {k: np.asarray(v) for k, v in ds.shard(1).items()},
        pipeline.simulate_batch(dataclasses.replace(spec, batch_size=3), 1),
    )


# --- reading -----------------------------------------------------------------------------------------


def test_indexing(written, expected):
    ds = datasets.load(written)
    one = ds[5]
    assert one["images"].shape == (80, 80) and one["n_sources"].shape == ()
    _assert_equal(one, {k: v[5] for k, v in expected.items()})
    _assert_equal(ds[-1], {k: v[-1] for k, v in expected.items()})
    _assert_equal(ds[1:9:3], {k: v[1:9:3] for k, v in expected.items()})
    idx = np.array([9, 0, 5, 5, 3, -2])  # unsorted, repeated, negative, across shards
    _assert_equal(ds[idx], {k: v[idx] for k, v in expected.items()})
    _assert_equal(ds[[2, 7]], {k: v[[2, 7]] for k, v in expected.items()})
    mask = np.arange(NUM_IMAGES) % 3 == 0
    _assert_equal(ds[mask], {k: v[mask] for k, v in expected.items()})
    assert ds[[]]["images"].shape == (0, 80, 80)
    for bad in (NUM_IMAGES, -NUM_IMAGES - 1, [0, NUM_IMAGES], np.ones(3, bool), [0.5]):
        with pytest.raises(IndexError):
            ds[bad]
    writable = ds[0:2]["images"]
    writable += 1  # a copy, not the file


def test_read_gives_only_the_keys_asked_for(written, expected):
    ds = datasets.load(written)
    part = ds.read(slice(3, 9), ("images", "field_id"))  # across the shard boundary at 4 and 8
    assert set(part) == {"images", "field_id"}
    for key in part:
        np.testing.assert_array_equal(part[key], expected[key][3:9], err_msg=key)
    np.testing.assert_array_equal(ds.read([7, 1], ("n_sources",))["n_sources"], expected["n_sources"][[7, 1]])
    _assert_equal(ds.read(slice(0, 10)), ds[0:10])
    with pytest.raises(KeyError, match=r"has no key\(s\) \['imgs'\]"):
        ds.read(slice(0, 2), ("imgs",))


def test_shards_are_memory_mapped_lazily(written):
    ds = datasets.load(written, max_open_shards=1)
    images = ds.shard(0)["images"]
    base = images
    while isinstance(base, np.ndarray):
        base = base.base
    base = base.obj if isinstance(base, memoryview) else base
    assert not images.flags.writeable and isinstance(base, mmap.mmap)
    assert len(ds._cache) == 1
    ds.shard(1)
    ds.shard(2)
    assert list(ds._cache) == [2]  # at most max_open_shards mapped at once
    np.testing.assert_array_equal(images, ds.shard(0)["images"])  # an evicted map stays valid
    with pytest.raises(IndexError):
        ds.shard(3)


def _fingerprints(images):
    return [img.tobytes() for img in images]


@pytest.mark.parametrize("read_chunk", [2048, 3])
def test_batches_cover_every_image_once(written, read_chunk):
    ds = datasets.load(written, read_chunk=read_chunk, max_open_shards=2)
    everything = sorted(_fingerprints(ds[:]["images"]))
    ordered = list(ds.batches(4))
    assert [len(b["images"]) for b in ordered] == [4, 4, 2]
    _assert_equal({k: np.concatenate([b[k] for b in ordered]) for k in ds.keys}, ds[:])
    assert [len(b["images"]) for b in ds.batches(4, drop_remainder=True)] == [4, 4]

    def shuffled(seed, **kwargs):
        batches = list(ds.batches(3, shuffle=True, seed=seed, **kwargs))
        return {k: np.concatenate([b[k] for b in batches]) for k in ds.keys}, [len(b["x"]) for b in batches]

    a, sizes = shuffled(1)
    assert sizes == [3, 3, 3, 1]
    assert sorted(_fingerprints(a["images"])) == everything  # every image exactly once
    _assert_equal(a, shuffled(1)[0])  # deterministic in the seed
    b, _ = shuffled(2)
    assert _fingerprints(a["images"]) != _fingerprints(b["images"])
    assert _fingerprints(a["images"]) != _fingerprints(ds[:]["images"])
    dropped, sizes = shuffled(1, drop_remainder=True)
    assert sizes == [3, 3, 3] and len(set(_fingerprints(dropped["images"]))) == 9
    # each image keeps its own catalog
    by_fp = {f: i for i, f in enumerate(_fingerprints(ds[:]["images"]))}
    idx = np.array([by_fp[f] for f in _fingerprints(a["images"])])
    _assert_equal(a, ds[idx])
    with pytest.raises(ValueError):
        next(ds.batches(0))


@pytest.mark.parametrize("read_chunk", [2048, 3])
def test_batches_from_a_start_are_the_rest_of_the_whole_pass(written, read_chunk):
    """``start=s``: batches s, s+1, ... of the same pass (a resumed epoch), shuffled or not, with rows or not."""
    ds = datasets.load(written, read_chunk=read_chunk, max_open_shards=2)
    for kwargs in (
        dict(shuffle=True, seed=7, drop_remainder=True),
        dict(shuffle=True, seed=7),
        dict(),
        dict(shuffle=True, seed=7, drop_remainder=True, rows=slice(1, 3)),
        dict(drop_remainder=True, rows=slice(0, 2)),
    ):
        whole = list(ds.batches(3, **kwargs))
        for start in range(len(whole) + 1):
            rest = list(ds.batches(3, start=start, **kwargs))
            assert len(rest) == len(whole) - start, (kwargs, start)
            for a, b in zip(rest, whole[start:]):
                _assert_equal(a, b)
    with pytest.raises(ValueError, match="start must be >= 0"):
        next(ds.batches(3, start=-1))


def test_pickled_dataset_reopens(written):
    import pickle

    ds = datasets.load(written)
    ds.shard(0)
    clone = pickle.loads(pickle.dumps(ds))
    _assert_equal(clone[:], ds[:])


# --- resume ------------------------------------------------------------------------------------------


def test_resume_after_crash_renders_only_missing_shards(spec, written, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    monkeypatch.setattr(pipeline, "Simulator", _Crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    assert sorted(os.listdir(out)) == [".npejax-lock", "manifest.json", "shard-00000"]
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    with pytest.raises(datasets.DatasetError, match="incomplete"):
        datasets.load(out)

    _Recorder.calls = []
    monkeypatch.setattr(pipeline, "Simulator", _Recorder)
    report = datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    assert report.rendered_shards == (1, 2) and report.rendered_images == 6
    assert _Recorder.calls == [(1, 2)]
    _assert_equal(datasets.load(out)[:], datasets.load(written)[:])
    assert datasets.load(out).manifest["complete"] is True

    _Recorder.calls = []  # a complete dataset: nothing to do
    report = datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    assert report.rendered_shards == () and _Recorder.calls == []


def test_resume_replaces_missing_and_damaged_shards(spec, written, tmp_path, monkeypatch):
    out = _copy(written, tmp_path)
    shutil.rmtree(os.path.join(out, "shard-00000"))
    with open(os.path.join(out, "shard-00002", "flux.npy"), "r+b") as f:
        f.truncate(100)
    _Recorder.calls = []
    monkeypatch.setattr(pipeline, "Simulator", _Recorder)
    report = datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    assert report.rendered_shards == (0, 2)
    assert _Recorder.calls == [(0, 1), (2, 1)]  # shard 1 was not rendered again
    _assert_equal(datasets.load(out)[:], datasets.load(written)[:])


def test_interrupt_leaves_no_temporary_files(spec, written, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    calls = []
    real_save = writer._save_array

    def save_then_interrupt(path, array):
        calls.append(path)
        if len(calls) == 30:  # in the middle of the second shard
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(writer, "_save_array", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    assert _temporaries(out) == []
    assert sorted(os.listdir(out)) == [".npejax-lock", "manifest.json", "shard-00000"]
    monkeypatch.setattr(writer, "_save_array", real_save)
    datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    _assert_equal(datasets.load(out)[:], datasets.load(written)[:])


def test_stale_temporaries_of_a_killed_writer_are_removed(spec, written, tmp_path):
    out = _copy(written, tmp_path)
    os.makedirs(os.path.join(out, dataset_format.TMP_PREFIX + "shard-00001-abc"))
    open(os.path.join(out, dataset_format.TMP_PREFIX + "x.json"), "w").close()
    open(os.path.join(out, f".manifest.json{io.TMP_MARKER}abc.json"), "w").close()  # npejax.io's temporary
    assert len(_temporaries(out)) == 3
    datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    assert _temporaries(out) == []


# --- refusals and errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(seed=124), "seed: 123 -> 124"),
        (dict(num_images=12), "num_images: 10 -> 12"),
        (dict(split="test"), "split: 'val' -> 'test'"),
        (dict(shard_size=5), "shard_size: 4 -> 5"),
        (dict(sources_per_pixel=1e-3), "spec.prior.sources_per_pixel"),
        (dict(field_prior="one"), "spec.field_prior"),
    ],
)
def test_different_dataset_in_same_directory_is_refused(spec, written, change, message):
    s = spec
    if "seed" in change:
        s = dataclasses.replace(s, seed=change["seed"])
    if "sources_per_pixel" in change:
        s = dataclasses.replace(s, prior=dataclasses.replace(s.prior, sources_per_pixel=change["sources_per_pixel"]))
    if "field_prior" in change:
        s = dataclasses.replace(s, field_prior=change["field_prior"])
    with pytest.raises(datasets.DatasetError) as info:
        datasets.write_dataset(
            s,
            written,
            change.get("num_images", NUM_IMAGES),
            change.get("split", "val"),
            shard_size=change.get("shard_size"),
            num_workers=0,
            progress=False,
        )
    assert written in str(info.value) and message in str(info.value)


def test_other_bank_is_refused(spec, written):
    other = dataclasses.replace(spec, bank=spec.bank.subset(np.arange(10)))
    with pytest.raises(datasets.DatasetError, match="bank.num_fields: 500 -> 10"):
        datasets.write_dataset(other, written, NUM_IMAGES, "val", num_workers=0, progress=False)


def test_non_empty_directory_without_manifest_is_refused(spec, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(datasets.DatasetError, match="not empty"):
        datasets.write_dataset(spec, tmp_path, 4, "val", num_workers=0, progress=False)
    assert sorted(os.listdir(tmp_path)) == [".npejax-lock", "notes.txt"]


def test_bad_arguments(spec, tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        datasets.write_dataset(spec, tmp_path / "a", 0, "val", num_workers=0, progress=False)
    with pytest.raises(ValueError, match="'dev'"):
        datasets.write_dataset(spec, tmp_path / "a", 4, "dev", num_workers=0, progress=False)


def test_concurrent_writer_is_refused(spec, tmp_path):
    os.makedirs(tmp_path / "d")
    with writer._DirectoryLock(str(tmp_path / "d")):
        with pytest.raises(datasets.DatasetError, match="another process"):
            datasets.write_dataset(spec, tmp_path / "d", 4, "val", num_workers=0, progress=False)


def test_load_errors_name_the_file(written, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load(tmp_path / "nowhere")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        datasets.load(tmp_path / "empty")

    out = _copy(written, tmp_path)
    os.unlink(os.path.join(out, "shard-00001", "tile_locs.npy"))
    with pytest.raises(datasets.DatasetError, match=r"shard-00001/tile_locs.npy is missing"):
        datasets.load(out)
    shutil.rmtree(os.path.join(out, "shard-00001"))
    with pytest.raises(datasets.DatasetError, match=r"shard-00001 is missing"):
        datasets.load(out)
    shutil.rmtree(out)

    out = _copy(written, tmp_path)
    path = os.path.join(out, "shard-00002", "images.npy")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(datasets.DatasetError, match=r"shard-00002/images.npy is truncated"):
        datasets.load(out)
    np.save(path, np.zeros((2, 80, 80), np.float64))
    with pytest.raises(datasets.DatasetError, match=r"images.npy holds float64\[2, 80, 80\], expected float32"):
        datasets.load(out)
    with open(path, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(datasets.DatasetError, match="not a readable .npy"):
        datasets.load(out)

    manifest = os.path.join(out, "manifest.json")
    with open(manifest, "w") as f:
        f.write("{not json")
    with pytest.raises(datasets.DatasetError, match="manifest.json is not valid JSON"):
        datasets.load(out)
    with open(manifest, "w") as f:
        json.dump({"format": "npejax-dataset", "format_version": 99}, f)
    with pytest.raises(datasets.DatasetError, match="format version 99"):
        datasets.load(out)
    m = json.loads(open(os.path.join(written, "manifest.json")).read())
    m["shards"][2]["count"] = 4
    with open(manifest, "w") as f:
        json.dump(m, f)
    with pytest.raises(datasets.DatasetError, match="shard list does not match"):
        datasets.load(out)


def test_a_shard_of_another_dataset_is_refused(spec, written, tmp_path):
    """Every shard records its dataset, split, seed and index (shard.json): a shard of another split copied in
    under a right name (its arrays of the right shapes) is refused naming the file, the field and both values;
    so is a shard moved to another index, or one without the file in a dataset whose shards all have it. A
    rerun of the writer renders such a shard again."""
    test = tmp_path / "test"
    datasets.write_dataset(dataclasses.replace(spec, seed=7), test, NUM_IMAGES, "test", num_workers=0, progress=False)
    shutil.rmtree(test / "shard-00001")
    shutil.copytree(os.path.join(written, "shard-00001"), test / "shard-00001")  # a validation shard
    with pytest.raises(
        datasets.DatasetError,
        match=rf"^dataset {test}: shard file {test}/shard-00001/shard.json has split 'val', the manifest "
        rf"{test}/manifest.json 'test': a shard of another dataset",
    ):
        datasets.load(test)

    out = _copy(written, tmp_path)
    shutil.rmtree(os.path.join(out, "shard-00000"))
    shutil.copytree(os.path.join(written, "shard-00001"), os.path.join(out, "shard-00000"))  # same shapes
    with pytest.raises(datasets.DatasetError, match=r"shard-00000/shard.json has index 1, the manifest .* 0:"):
        datasets.load(out)
    os.unlink(os.path.join(out, "shard-00000", "shard.json"))
    with pytest.raises(datasets.DatasetError, match=r"shard-00000/shard.json is missing \(every shard"):
        datasets.load(out)
    report = datasets.write_dataset(spec, out, NUM_IMAGES, "val", num_workers=0, progress=False)
    assert report.rendered_shards == (0,)
    _assert_equal(datasets.load(out)[:], datasets.load(written)[:])


def test_a_dataset_written_before_shards_recorded_their_identity_loads(written, tmp_path):
    """A manifest without ``identity`` and shards without shard.json (an older npejax's) load as before."""
    out = _copy(written, tmp_path)
    manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
    del manifest["identity"]
    io.write_json(os.path.join(out, "manifest.json"), manifest)
    for i in range(3):
        os.unlink(os.path.join(out, datasets.shard_name(i), "shard.json"))
    _assert_equal(datasets.load(out)[:], datasets.load(written)[:])


def test_split_seed():
    seeds = [datasets.split_seed(0, s) for s in datasets.SPLITS]
    assert len(set(seeds)) == 3
    assert seeds == [datasets.split_seed(0, s) for s in datasets.SPLITS]
    assert seeds[1] == int(np.random.SeedSequence([0, 1]).generate_state(1)[0])
    assert datasets.split_seed(1, "train") != seeds[0]
    with pytest.raises(ValueError, match="'dev'"):
        datasets.split_seed(0, "dev")
