"""Networks of voxlink: encoder E_K, binarizer B, 3D convolutional LSTM grid, 3D decoder, depth
decoder, and the implicit model that composes them (Golts & Schechner, Sec. III-C)."""

from voxlink.models.binarizer import Binarizer, binarize, compression_ratio, pack_bits, unpack_bits
from voxlink.models.config import CONFIGS, ModelConfig, get_config
from voxlink.models.implicit import ImplicitModel

__all__ = ["Binarizer", "binarize", "compression_ratio", "pack_bits", "unpack_bits", "CONFIGS", "ModelConfig",
           "get_config", "ImplicitModel"]
