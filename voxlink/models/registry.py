"""The registry of voxlink's model families (CompressAI's manner): a name -> what the family is and its
classes.

Every family keeps one small contract: ``forward`` (training: returns what its loss needs),
``compress`` (views float32 [N, 3, H, W] in [0, 1] -> one ``bytes`` per view: what the drone sends),
``decompress`` (those bytes -> what the ground decodes: codes, or images for the image codecs) and,
for the 3D families, ``reconstruct`` (one object's views' bytes -> occupancy probabilities float32
[1, R, R, R]). A family whose ``model_file`` is true is stored in voxlink's model files
(:mod:`voxlink.weights`; its name is the file's ``voxlink.family``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _implicit():
    from voxlink.models.config import ModelConfig
    from voxlink.models.implicit import ImplicitModel

    return ModelConfig, ImplicitModel


def _fusion():
    from voxlink.models.fusion import FusionConfig, FusionModel

    return FusionConfig, FusionModel


def _codec():
    from voxlink.models.rnn_compress import CompressionConfig, RNNCompressor

    return CompressionConfig, RNNCompressor


def _joint():
    from voxlink.models.joint import JointConfig, JointModel

    return JointConfig, JointModel


def _jpeg2000():
    from voxlink.jpeg2000 import Jpeg2000Baseline

    return None, Jpeg2000Baseline


@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        name: the registry key. description: what it is, with its source.
        classes: a function returning ``(config class or None, model class)`` (imported when called).
        model_file: stored in voxlink model files. reconstructs: a 3D family (``reconstruct`` from bytes).
    """

    name: str
    description: str
    classes: Callable[[], tuple]
    model_file: bool = False
    reconstructs: bool = True


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("implicit", "the paper's implicit model: E_K + binarizer on the drone, 3D-LSTM + 3D decoder on the "
           "ground (Golts & Schechner Sec. III-C, Eqs. 12-15; 3D-R2N2)", _implicit, model_file=True),
    Family("fusion", "the pose-aware model (the default): E_K + binarizer, a view decoder to silhouette and depth, "
           "order-invariant fusion placed by the poses, a 3D refiner (voxlink.models.fusion)", _fusion, model_file=True),
    Family("codec", "N_small, the RNN image codec (Sec. II-B, Eq. 14; Toderici et al. 2017): N iterations of "
           "m bits a view, images back", _codec, model_file=True, reconstructs=False),
    Family("sequential", "N_small then 3D-R2N2 on its decoded images, trained jointly (Sec. III-A, Eq. 16)", _joint,
           model_file=True),
    Family("direct", "N_small's codes straight into the 3D network, trained jointly (Sec. III-B, Eq. 16)", _joint,
           model_file=True),
    Family("jpeg2000", "JPEG 2000 (OpenJPEG) at the same bytes, then 3D-R2N2 on the decoded views (Sec. IV, "
           "the baseline of Fig. 8)", _jpeg2000),
)}


def family(name: str) -> Family:
    """The family called ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; voxlink has {sorted(FAMILIES)}")
    return FAMILIES[name]
