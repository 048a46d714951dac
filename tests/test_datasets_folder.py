"""The image-folder dataset on small folders fabricated in the real on-disk format (PNG and JPEG files)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dualmeta.datasets import folder


def _write(path, size=(10, 7), mode="RGB", seed=0, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, fmt)


def _make(root, layout="subfolders", classes=("a", "b", "c"), per_class=4):
    for s, split in enumerate(("train", "val", "test")):
        for c, name in enumerate(classes):
            base = root / split / f"{split}_{name}" if layout == "subfolders" else root / f"{split}_{name}"
            for i in range(per_class):
                _write(base / f"{i}.{'png' if i % 2 else 'jpg'}", fmt="PNG" if i % 2 else "JPEG",
                       mode="L" if c == 0 else "RGB", seed=100 * s + 10 * c + i)
        if layout == "lists":
            (root / f"{split}.txt").write_text("\n".join(f"{split}_{n}" for n in classes) + "\n")


@pytest.mark.parametrize("layout", ["subfolders", "lists"])
@pytest.mark.parametrize("channels", [1, 3])
def test_folder_splits_resize_and_convert(tmp_path, layout, channels):
    _make(tmp_path, layout)
    data = folder.load_folder(str(tmp_path), "val", image_size=8, channels=channels, needed=3)
    assert data.images.shape == (3, 4, 8, 8, channels) and data.images.dtype == np.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.names == ("val_a", "val_b", "val_c")
    again = folder.load_folder(str(tmp_path), "val", image_size=8, channels=channels)
    assert np.array_equal(data.images, again.images)


def test_folder_errors_name_the_class(tmp_path):
    _make(tmp_path)
    with pytest.raises(ValueError, match="class 'train_a' has 4 images, fewer than the 6"):
        folder.load_folder(str(tmp_path), "train", needed=6)
    (tmp_path / "train" / "train_empty").mkdir()
    with pytest.raises(ValueError, match="class 'train_empty': no images"):
        folder.load_folder(str(tmp_path), "train")
    (tmp_path / "train" / "train_empty").rmdir()
    (tmp_path / "train" / "train_c" / "1b.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="class 'train_c': cannot read image .*1b.png"):
        folder.load_folder(str(tmp_path), "train")
    with pytest.raises(ValueError, match="neither a test/ sub-folder nor a test.txt"):
        folder.load_folder(str(tmp_path / "train"), "test")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd, check):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "dualmeta", *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == check, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow  # ~80 s of CPU (six CLI runs): over the default run's time budget
def test_train_on_a_folder_with_resnet12_in_each_backend_and_evaluate_in_the_other(tmp_path):
    """The acceptance check of issue 17, tiny: 2 steps of ProtoNet on ResNet-12 (widths 2-5-10-20), with DropBlock
    in training (masks by address; evaluation drops nothing)."""
    _make(tmp_path / "images", classes=("a", "b", "c"), per_class=3)
    args = ["--tasks=folder", f"--data_dir={tmp_path / 'images'}", "--model=resnet12", "--learner=protonet",
            "--hidden=2", "--train_ways=3", "--ways=3", "--shots=1", "--queries=2", "--train_queries=2",
            "--steps=2", "--episodes=3", "--drop_rate=0.1"]
    for trained, other in (("torch", "tf"), ("tf", "torch")):
        run_cli("train", f"--backend={trained}", *args, f"--logdir={tmp_path / trained}", cwd=tmp_path, check=0)
        lines = [run_cli("evaluate", f"--backend={b}", f"--checkpoint={tmp_path / trained}", "--episodes=3",
                         f"--data_dir={tmp_path / 'images'}", cwd=tmp_path, check=0).stdout.strip().splitlines()[-1]
                 for b in (trained, other)]
        assert lines[0].split("accuracy")[1] == lines[1].split("accuracy")[1], lines
