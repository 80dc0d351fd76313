"""Each cataloged image's distance from the fields its network was trained on (issue "Ready for real SDSS frames",
item 4): :class:`npejax.cataloging.images.FieldRange` through :func:`~npejax.cataloging.images.catalog_inputs`,
against :meth:`npejax.sim.fields.FieldBank.distance` computed directly."""

import numpy as np
import pytest

from npejax import catalogs
from npejax.cataloging import images
from npejax.nn.predictor import Predictor
from npejax.sim import fields

pytestmark = pytest.mark.fast

FAR_PSF = (1.0, 2.5, 4.0, 2.5, 0.1, 0.01)  # s2/s1 2.5, beta 2.5, p0 0.01: outside the default bank's one family


def _images(n, h=80, w=80, seed=0):
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, 0.028, (n, h, w)).astype(np.float32)  # a 0.7 nmgy sky's photon noise
    yy, xx = np.mgrid[:h, :w]
    out += (40.0 * np.exp(-((yy - 40.3) ** 2 + (xx - 39.6) ** 2) / (2 * 1.4**2))).astype(np.float32)  # r ~ 17
    return out


def test_catalog_records_each_images_distance_from_the_training_fields(capsys, tmp_path):
    net = Predictor.pretrained("cpu")
    bank = fields.load_bank(net.config.fields.bank)
    psf = np.stack([bank.psf_params[7], FAR_PSF]).astype(np.float32)
    background = np.full((2, 80, 80), 0.7, np.float32)
    inputs = images.Inputs.from_arrays(_images(2), background, psf, name="two.npz")
    table = images.catalog_inputs(net, inputs, batch_size=1)
    expected = bank.distance(psf, np.full(2, 0.7))
    threshold = bank.distance_threshold()
    assert expected[0] < threshold < expected[1]
    assert set(table["image"]) == {0, 1}
    for i in (0, 1):
        np.testing.assert_allclose(table["field_distance"][table["image"] == i], expected[i], rtol=1e-6)
    assert table.meta["FIELDBNK"] == "synthetic" and table.meta["FIELDTHR"] == pytest.approx(threshold, abs=1e-4)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "training fields" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: two.npz: image 1: its PSF and background lie")
    catalogs.write_table(table, tmp_path / "c.fits")  # the column has its unit and description in the file
    back = catalogs.read_table(tmp_path / "c.fits")
    np.testing.assert_allclose(back["field_distance"], table["field_distance"])


def test_many_images_beyond_the_fields_are_counted_not_listed(capsys):
    net = Predictor.pretrained("cpu")
    n = images.FIELD_WARNINGS + 3
    psf = np.tile(np.asarray(FAR_PSF, np.float32), (n, 1))
    inputs = images.Inputs.from_arrays(_images(n), np.full((n, 80, 80), 0.7, np.float32), psf, name="many")
    images.catalog_inputs(net, inputs, batch_size=4)
    lines = [line for line in capsys.readouterr().err.splitlines() if "training fields" in line]
    assert (
        len(lines) == images.FIELD_WARNINGS + 1
        and lines[-1] == "warning: many: 3 more images beyond the training fields"
    )


def test_a_network_whose_bank_cannot_be_read_catalogs_without_the_column(capsys):
    net = Predictor.pretrained("cpu")
    net.config.unlock()
    net.config.fields.bank = "/nowhere/bank.npz"
    inputs = images.Inputs.from_arrays(_images(1), np.full((1, 80, 80), 0.7, np.float32), np.float32([FAR_PSF]))
    table = images.catalog_inputs(net, inputs)
    assert "field_distance" not in table.colnames and len(table) >= 1
    assert "field bank '/nowhere/bank.npz' cannot be read here" in capsys.readouterr().err
