"""The learned-descriptor signal, on a tiny ONNX model the test builds itself."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

import imgmatch
from imgmatch.errors import ModelError
from imgmatch.signals import get
from imgmatch.signals.learned import ENV_MODEL, ENV_SIZE, OnnxModel, configured_model

from conftest import FIXTURES, ORIGINALS

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def tiny_model(path, *, size: int | str = 32, channels: int = 3, seed: int = 0) -> None:
    """Conv 3x3 stride 2 -> ReLU -> 4x4 average pooling -> flatten: a 128-d embedding
    that keeps the picture's layout (so a mirror image differs)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.standard_normal((8, channels, 3, 3))
                                      .astype(np.float32), "w")
    dims = ["batch", channels, size, size]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
         helper.make_node("Flatten", ["p"], ["embedding"])],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", "dim"])],
        [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


@pytest.fixture()
def model(tmp_path, monkeypatch):
    path = tmp_path / "tiny.onnx"
    tiny_model(path)
    monkeypatch.setenv(ENV_MODEL, str(path))
    monkeypatch.delenv(ENV_SIZE, raising=False)
    return path


def decoded(image: Image.Image):
    from imgmatch.decode import decode

    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=85)
    return decode(out.getvalue(), colour=True)


def test_embeddings_are_unit_vectors_of_the_model(model) -> None:
    m = OnnxModel(model)
    assert (m.height, m.width) == (32, 32)
    vectors = m.embed([Image.open(ORIGINALS / "cat.jpg"), Image.open(ORIGINALS / "temple.jpg")])
    assert vectors.shape == (2, 128)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_the_signal_keeps_copies_close_and_others_far(model) -> None:
    sig = get("onnx")
    cat = Image.open(ORIGINALS / "cat.jpg")
    a = sig.compute(decoded(cat))
    b = sig.compute(decoded(cat.resize((cat.width // 2, cat.height // 2))))
    c = sig.compute(decoded(Image.open(ORIGINALS / "temple.jpg")))
    assert a.bits == 256
    assert a - b <= sig.threshold < a - c
    # the mirror variant is the mirror image's code
    variants = sig.dihedral(decoded(cat))
    assert len(variants) == 8 and variants[0] == a
    assert variants[1] == sig.compute(decoded(ImageOps.mirror(cat)))


def test_version_follows_the_model_file(model, tmp_path, monkeypatch) -> None:
    first = get("onnx").version
    other = tmp_path / "other.onnx"
    tiny_model(other, seed=1)
    monkeypatch.setenv(ENV_MODEL, str(other))
    assert get("onnx").version != first


def test_collection_with_the_learned_signal(model, tmp_path) -> None:
    db = tmp_path / "c.db"
    names = ("astronaut", "cat", "coffee", "temple")
    with imgmatch.Collection.open(db) as c:
        c.add_many(((ORIGINALS / f"{n}.jpg", None) for n in names),
                   signals=("pdq", "onnx"), workers=1)
        assert c.stats()["signals"]["onnx"] == len(names)
        matches = c.query(FIXTURES / "queries" / "temple_mirror_crop10.jpg")
    assert matches and "onnx" in matches[0].distances
    assert matches[0].sha256 == imgmatch.collection.hash_bytes(
        (ORIGINALS / "temple.jpg").read_bytes(), ("pdq",))["sha256"]


def test_dynamic_input_size(tmp_path, monkeypatch) -> None:
    path = tmp_path / "dynamic.onnx"
    tiny_model(path, size="side")
    assert (OnnxModel(path).height, OnnxModel(path, size=64).width) == (320, 64)
    monkeypatch.setenv(ENV_MODEL, str(path))
    monkeypatch.setenv(ENV_SIZE, "48")
    assert configured_model().width == 48
    monkeypatch.setenv(ENV_SIZE, "big")
    with pytest.raises(ModelError, match=ENV_SIZE):
        configured_model()


@pytest.mark.parametrize("setup,message", [
    (lambda p: None, "set IMGMATCH_ONNX_MODEL"),
    (lambda p: str(p / "missing.onnx"), "cannot read"),
    (lambda p: (p / "junk.onnx").write_bytes(b"not a model") and str(p / "junk.onnx"),
     "not a usable ONNX model"),
    (lambda p: tiny_model(p / "grey.onnx", channels=1) or str(p / "grey.onnx"), "channels"),
])
def test_model_problems_are_named(tmp_path, monkeypatch, setup, message) -> None:
    path = setup(tmp_path)
    if path is None:
        monkeypatch.delenv(ENV_MODEL, raising=False)
    else:
        monkeypatch.setenv(ENV_MODEL, path)
    with pytest.raises(ModelError, match=message):
        get("onnx").prepare()
    # an ingest refuses to start rather than failing every file
    with imgmatch.Collection.open(tmp_path / "c.db") as c, pytest.raises(ModelError):
        c.add_many([(ORIGINALS / "cat.jpg", None)], signals=("onnx",), workers=0)
