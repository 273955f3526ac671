"""Model configurations as plain dataclasses (TOML files map onto them field by field).

* ``paper``: 3D-R2N2 "3D-LSTM-3" at full size, as in Golts & Schechner: encoder channels
  96-128-256-256-256-256, K = 1024 bits, N_h = 128, 128 x 128 views.
* ``cpu``: the same structure scaled (channels, N_h, a low-rank gate input) so that a useful model
  trains on 2 CPU cores in about an hour.
* ``uncompressed``: like ``cpu`` without the binarizer (a float K-vector: the paper's 12:1 ceiling
  at K = 1024 float32).
* ``tiny``: seconds-scale, for tests.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path


class ConfigDict:
    """``to_dict`` / ``from_dict`` for a model-config dataclass (shared by every model family)."""

    def to_dict(self) -> dict:
        """Plain dict (JSON/TOML-serialisable); tuples become lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown keys (or values the config's checks refuse).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - names
        if extra:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(extra)}")
        return cls(**d)


@dataclass
class ModelConfig(ConfigDict):
    """Architecture of an implicit model.

    Attributes:
        name: config name.
        code_bits: K, bits per view (the encoder's output length).
        binarize: True for the implicit model; False for the uncompressed variant (float32 code).
        image_size: input side in pixels (128).
        enc_channels: channels of the six conv + LeakyReLU + 2x2 max-pool stages of E_K.
        enc_first_kernel: kernel of the first conv (7 in 3D-R2N2).
        hidden: N_h, hidden channels of each 3D-LSTM unit.
        grid: side of the 3D-LSTM grid (4 -> 4x4x4 units).
        gate_rank: rank of the FC input to the gates (0 = full K x 3*N_h*grid^3 matrix).
        dec_channels: channels of the 3D decoder (8^3, 16^3, 16^3, 32^3; then 2 classes).
        depth_channels: channels of the depth decoder's upsampling stages (4x4 doubling per stage; then
            bilinear to the image size).
        resolution: output occupancy grid side (32).
        frame: reconstruction frame, ``object`` or ``view``.
    """

    name: str = "cpu"
    code_bits: int = 1024
    binarize: bool = True
    image_size: int = 128
    enc_channels: tuple[int, ...] = (24, 32, 64, 64, 128, 128)
    enc_first_kernel: int = 7
    hidden: int = 48
    grid: int = 4
    gate_rank: int = 256
    dec_channels: tuple[int, ...] = (32, 32, 24, 16)
    depth_channels: tuple[int, ...] = (64, 48, 32, 24)
    resolution: int = 32
    frame: str = "view"

    def __post_init__(self):
        self.enc_channels = tuple(self.enc_channels)
        self.dec_channels = tuple(self.dec_channels)
        self.depth_channels = tuple(self.depth_channels)
        if self.code_bits < 1:
            raise ValueError(f"code_bits must be >= 1, got {self.code_bits}")
        if len(self.enc_channels) != 6:
            raise ValueError("enc_channels needs six stages (3D-R2N2 encoder stride 64)")
        if self.image_size % 64:
            raise ValueError(f"image_size must be a multiple of 64, got {self.image_size}")
        if self.resolution != self.grid * 8 or len(self.dec_channels) != 4:
            raise ValueError("the decoder upsamples the grid 3 times: resolution must be 8 * grid, 4 dec_channels")
        if self.frame not in ("object", "view"):
            raise ValueError(f"frame must be object or view, got {self.frame!r}")

CONFIGS: dict[str, ModelConfig] = {
    "paper": ModelConfig(name="paper", enc_channels=(96, 128, 256, 256, 256, 256), hidden=128, gate_rank=0,
                         dec_channels=(128, 128, 64, 32), depth_channels=(256, 128, 64, 32, 16)),
    "cpu": ModelConfig(name="cpu"),
    "uncompressed": ModelConfig(name="uncompressed", binarize=False),
    "tiny": ModelConfig(name="tiny", code_bits=64, enc_channels=(8, 8, 16, 16, 16, 16), enc_first_kernel=3, hidden=8,
                        gate_rank=16, dec_channels=(8, 8, 8, 8), depth_channels=(16, 8, 8)),
}


def get_config(name_or_path: str | Path) -> ModelConfig:
    """A named config (``paper``, ``cpu``, ``uncompressed``, ``tiny``) or a TOML file's ``[model]`` table.

    Raises:
        ValueError: unknown name or bad TOML keys. FileNotFoundError: missing TOML file.
    """
    s = str(name_or_path)
    if s in CONFIGS:
        return dataclasses.replace(CONFIGS[s])
    p = Path(s)
    if p.suffix == ".toml":
        d = tomllib.loads(p.read_text())
        return ModelConfig.from_dict(d.get("model", d))
    raise ValueError(f"unknown model config {s!r}; choose one of {sorted(CONFIGS)} or a .toml file")
