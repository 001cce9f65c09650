"""A learned copy-detection descriptor from an ONNX model the user supplies.

Models trained for copy detection (for example an SSCD export, the DISC21
winners' approach) map an image to a vector whose cosine similarity survives
crops, overlays and colour edits better than any hash. imgmatch ships no
model and downloads none: set ``IMGMATCH_ONNX_MODEL`` to a model file (and,
for models with free input sizes, ``IMGMATCH_ONNX_SIZE``, default 320). Its
one input is a float NCHW RGB batch normalised with ImageNet's mean and
standard deviation; its first output is one vector per image.

The vector is L2-normalised and binarised by the signs of 256 fixed random
projections (a deterministic seed): random-hyperplane hashing keeps cosine
similarity as Hamming distance (expected distance = angle / 180 degrees x
256 bits), so the learned descriptor uses the same catalog, multi-index
tables, links and scores as the hashes. The threshold of 59 bits is a
cosine similarity of about 0.75, the operating point SSCD's authors give
for copy detection. The signal's version is derived from the model file's
SHA-256, so codes from different models are never compared.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..decode import Decoded
from ..errors import ModelError
from .base import DIHEDRAL_OPS, HashValue, SignalType, pack_bits

ENV_MODEL = "IMGMATCH_ONNX_MODEL"
ENV_SIZE = "IMGMATCH_ONNX_SIZE"
DEFAULT_SIZE = 320
BITS = 256
PROJECTION_SEED = 20261129
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


class OnnxModel:
    """An ONNX image-embedding model, loaded once per process and checked."""

    def __init__(self, path: str | Path, size: int | None = None) -> None:
        self.path = Path(path)
        try:
            blob = self.path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read the ONNX model {self.path}: "
                             f"{exc.strerror or exc}") from None
        self.sha256 = hashlib.sha256(blob).hexdigest()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("the learned descriptor needs onnxruntime: "
                             "pip install 'imgmatch[learned]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # workers are the parallelism
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(blob, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own, undocumented types
            raise ModelError(f"{self.path} is not a usable ONNX model: {exc}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError(f"{self.path} must take one NCHW image batch; it takes "
                             f"{[(i.name, i.shape) for i in inputs]}")
        shape = inputs[0].shape
        if isinstance(shape[1], int) and shape[1] != 3:
            raise ModelError(f"{self.path} takes {shape[1]} channels, not 3 (RGB)")
        self.input_name = inputs[0].name
        fixed = [d for d in shape[2:] if isinstance(d, int) and d > 0]
        self.height = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else None
        self.width = shape[3] if isinstance(shape[3], int) and shape[3] > 0 else None
        side = size or (max(fixed) if fixed else DEFAULT_SIZE)
        self.height, self.width = self.height or side, self.width or side

    def embed(self, images: list) -> np.ndarray:
        """L2-normalised vectors (n, d) of RGB PIL images."""
        from PIL import Image

        batch = np.stack([
            ((np.asarray(im.convert("RGB").resize((self.width, self.height),
                                                  Image.Resampling.BILINEAR),
                         np.float32).transpose(2, 0, 1) / 255.0) - _MEAN) / _STD
            for im in images]).astype(np.float32)
        try:
            out = self.session.run(None, {self.input_name: batch})[0]
        except Exception as exc:
            raise ModelError(f"{self.path} failed on an image: {exc}") from None
        vectors = np.asarray(out, np.float32).reshape(len(images), -1)
        if not np.all(np.isfinite(vectors)):
            raise ModelError(f"{self.path} returned non-finite values")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


_MODELS: dict[tuple[str, int | None], OnnxModel] = {}


def configured_model() -> OnnxModel:
    """The model named by ``IMGMATCH_ONNX_MODEL`` (cached per process)."""
    path = os.environ.get(ENV_MODEL)
    if not path:
        raise ModelError(f"the 'onnx' signal needs a model: set {ENV_MODEL} to an ONNX file "
                         "(imgmatch downloads none)")
    size_text = os.environ.get(ENV_SIZE)
    try:
        size = int(size_text) if size_text else None
    except ValueError:
        raise ModelError(f"{ENV_SIZE} must be a whole number of pixels, not {size_text!r}") \
            from None
    key = (path, size)
    if key not in _MODELS:
        _MODELS[key] = OnnxModel(path, size)
    return _MODELS[key]


@lru_cache(maxsize=4)
def projections(dim: int) -> np.ndarray:
    """The fixed (dim, 256) random hyperplanes: the same on every machine."""
    return np.random.default_rng(PROJECTION_SEED).standard_normal((dim, BITS)).astype(np.float32)


class OnnxSignal(SignalType):
    """Random-hyperplane bits of a learned embedding (see the module's text)."""

    name = "onnx"
    bits = BITS
    threshold = 59
    min_side = DEFAULT_SIZE

    def prepare(self) -> None:
        configured_model()

    @property
    def version(self) -> int:  # type: ignore[override]
        """Derived from the model file: values of different models never meet."""
        return int(configured_model().sha256[:7], 16)

    def _codes(self, images: list) -> list[HashValue]:
        vectors = configured_model().embed(images)
        bits = vectors @ projections(vectors.shape[1]) > 0
        return [HashValue(self.name, pack_bits(row)) for row in bits]

    def compute(self, image: Decoded) -> HashValue:
        return self._codes([image.in_colour().image])[0]

    def link_variants(self, image: Decoded) -> list[HashValue]:
        colour = image.in_colour()
        return self._codes([colour.image, colour.transposed(DIHEDRAL_OPS[1]).image])

    def dihedral(self, image: Decoded) -> list[HashValue]:
        colour = image.in_colour()
        return self._codes([colour.transposed(op).image for op in DIHEDRAL_OPS])
