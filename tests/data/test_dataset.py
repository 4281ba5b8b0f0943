import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import Preprocessing
from pipeline.data.bad_rows import DataError
from pipeline.data.dataset import DATASET_SCHEMA, DatasetInfo, class_indices, in_fraction, read_dataset_info
from pipeline.data.decode import decode_file, decode_images, equal_share, load_split
from pipeline.data.importers import ingest
from pipeline.data.preprocess import model_input
from tests.conftest import write_idx


def _png(value: int, size: int = 8, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), value if mode == "L" else (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_idx_folder_becomes_the_parquet_contract(tmp_path):
    source = tmp_path / "fashion-idx"
    source.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(source / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    info = ingest(source, tmp_path / "ds", rows_per_file=16)
    assert info.rows == {"train": 30, "test": 10} and info.mode == "L" and info.image_size == 28
    assert json.loads((tmp_path / "ds" / "classes.json").read_text())[0] == "T-shirt/top"  # "fashion" in the path
    table = pq.read_table(tmp_path / "ds" / "train")
    assert table.schema.names == ["id", "image", "label"] and table.num_rows == 30
    assert len(list((tmp_path / "ds" / "train").glob("*.parquet"))) == 2
    ids, pixels, labels = load_split(tmp_path / "ds", "train")
    assert pixels.shape == (30, 1, 28, 28) and pixels.min() >= -1 and pixels.max() <= 1
    assert ids[0] == "train-000000" and labels[:3].tolist() == [0, 1, 2]


def test_imagefolder_split_per_class_and_resized(tmp_path):
    source = tmp_path / "shapes"
    for name, value in (("circle", 10), ("square", 200)):
        (source / name).mkdir(parents=True)
        for i in range(10):
            (source / name / f"{i}.png").write_bytes(_png(value, 40, "RGB"))
    info = ingest(source, tmp_path / "ds", test_fraction=0.2)
    assert info.classes == ["circle", "square"] and info.mode == "RGB" and info.image_size == 40
    assert info.rows == {"train": 16, "test": 4}
    _, pixels, labels = load_split(tmp_path / "ds", "test")
    assert pixels.shape == (4, 3, 40, 40) and sorted(labels.tolist()) == [0, 0, 1, 1]


def test_corrupt_image_is_named(tmp_path):
    source = tmp_path / "bad"
    (source / "a").mkdir(parents=True)
    (source / "a" / "ok.png").write_bytes(_png(1))
    (source / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"a/broken.png.*cannot be decoded"):
        ingest(source, tmp_path / "ds")


def test_decode_file_yields_bounded_batches_of_pixels_and_each_bad_rows_problem(tmp_path):
    rows = [("good", _png(30), 3), ("bytes", b"\x89PNG broken", 1), ("unlabelled", _png(40), None),
            ("label-12", _png(50), 12), ("last", _png(60), 5)]
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table(list(zip(*rows)), schema=DATASET_SCHEMA), path)
    info = DatasetInfo(classes=[str(c) for c in range(10)], mode="L", image_size=8, rows={"test": 5})
    preprocessing = Preprocessing.project("L", 8)
    batches = list(decode_file({"path": np.array([str(path)], dtype=object)}, info, preprocessing, rows_per_batch=2))
    assert [len(batch["id"]) for batch in batches] == [2, 2, 1]
    merged = {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}
    assert merged["id"].tolist() == [row[0] for row in rows] and set(merged["path"]) == {str(path)}
    assert merged["label"].tolist() == [3, -1, -1, -1, 5]
    problems = merged["problem"].tolist()
    assert problems[1].startswith("image bytes cannot be decoded") and problems[::4] == ["", ""]
    assert problems[2:4] == ["missing label", "label 12 outside classes.json (10 classes)"]
    assert merged["pixels"].dtype == np.uint8 and merged["pixels"].shape == (5, 1, 8, 8)
    assert (merged["pixels"][0] == 30).all() and (merged["pixels"][1:4] == 0).all()
    # the encoder scales the pixels into exactly what training decodes
    assert np.array_equal(model_input(merged["pixels"][4:], preprocessing).numpy(),
                          decode_images([_png(60)], preprocessing, ["last"]))


def test_missing_dataset_and_unknown_classes_are_clear(tmp_path):
    with pytest.raises(DataError, match="not an ingested dataset"):
        read_dataset_info(tmp_path)
    with pytest.raises(DataError, match=r"\['zebra'\] are not in the dataset"):
        class_indices(["cat", "dog"], ["zebra"])
    assert class_indices(["a", "b", "c"], "first_half") == [0, 1]


def test_fraction_is_decided_by_id_alone():
    ids = [f"row-{i}" for i in range(2000)]
    chosen = [i for i in ids if in_fraction(i, 0.5, seed=3)]
    assert 900 < len(chosen) < 1100
    assert chosen == [i for i in reversed(ids) if in_fraction(i, 0.5, seed=3)][::-1]


def test_shares_are_equal_disjoint_and_cover_whole_multiples_of_the_workers():
    shares = [list(range(11))[equal_share(11, rank, 3)] for rank in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]
    assert sorted(sum(shares, [])) == list(range(9))
    assert list(range(11))[equal_share(11, 0, 1)] == list(range(11))


def test_the_processes_that_decode_the_demos_images_do_not_import_torchvision_timm_or_onnxruntime():
    """Each costs seconds of start-up in every encoder and worker; the demo's images are at its
    model's size already, so nothing there resizes, crops or runs an imported model. An
    encoding's decoding task, which imports the decoder alone, needs no torch either."""
    import subprocess
    import sys

    def imported(modules: str, heavy: tuple[str, ...]) -> str:
        code = f"import sys, {modules}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert imported("pipeline.data.decode", ("torch", "torchvision")) == "[]\n"
    assert imported("pipeline.encode.split, pipeline.train.training", ("torchvision", "timm", "onnxruntime")) == "[]\n"
