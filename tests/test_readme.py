"""The README's Python examples run as written (issue 21, "the first hour of a new user").

Every ```` ```python ```` block of README.md is run as a script of its own (``python snippet.py``, so that the
simulator's worker processes import it again as a user's script would be, and a missing ``__main__`` guard
fails) in a folder that holds what the README's commands before it would have made: ``runs/demo`` (the
dataset and ``image.fits`` / ``image-sky.fits`` of the "Catalog an image with a pretrained network" simulate
command, made by that command here with its own arguments) and ``runs/cpu_small`` (a tiny trained workdir in
place of the set-up's training), and ``configs`` (a link to the repository's, as a user at the repository root
has it); each block is ``scripts/readme_block_N.py`` run from that folder, and the repository root is not added
to ``PYTHONPATH``: a block that imports ``configs`` as a module fails, as it would in a user's script.
Blocks that are not meant to run (output, pseudo-code) are fenced ```` ```text ````, not ``python``.
"""

import os
import re
import subprocess
import sys

import pytest

from npejax import simulate
from npejax.nn import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    with open(README, encoding="utf-8") as f:
        return FENCE.findall(f.read())


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory, tiny_config):
    """A folder with runs/demo (the README's simulate command) and runs/cpu_small (a tiny trained network)."""
    folder = tmp_path_factory.mktemp("readme")
    demo = folder / "runs" / "demo"
    args = ["--config", os.path.join(ROOT, "configs", "cpu.py"), "--split", "test", "--num-images", "1"]
    args += ["--config.image_size=160", "--config.fields.prior=one", "--num-workers", "0", "--noprogress"]
    code = simulate.main(["npejax.simulate", *args, "--out", str(demo), "--fits", str(demo / "image.fits")])
    assert code == 0 and (demo / "image-sky.fits").is_file()
    config = tiny_config()
    config.train.num_epochs = 1
    train.train_and_evaluate(config, str(folder / "runs" / "cpu_small"))
    os.symlink(os.path.join(ROOT, "configs"), folder / "configs")
    return folder


def test_readme_has_the_python_examples():
    blocks = python_blocks()
    assert len(blocks) >= 3, blocks
    assert any("Predictor.pretrained" in b for b in blocks) and any("Simulator(" in b for b in blocks)
    assert any("wcs=" in b for b in blocks)  # Predictor.catalog(..., wcs=...) is shown


@pytest.mark.parametrize("number", range(len(python_blocks())))
def test_readme_python_block_runs_as_written(user_folder, number):
    code = python_blocks()[number]
    script = user_folder / "scripts" / f"readme_block_{number}.py"  # a user's script in a folder of its own
    script.parent.mkdir(exist_ok=True)
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=user_folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"README python block {number}:\n{code}\n--- stderr:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
