"""scripts/average_model_weights.py: the weight average ("model soup") a shipped model may be made from."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from voxlink.models.fusion import FUSION_CONFIGS, FusionModel
from voxlink.weights import load_model, save_model

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "average_model_weights.py"


def _script():
    spec = importlib.util.spec_from_file_location("average_model_weights", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _two_files(tmp_path: Path) -> tuple[Path, Path]:
    cfg = FUSION_CONFIGS["fusion-spatial-tiny"]
    paths = []
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        m = FusionModel(dataclasses.replace(cfg))
        paths.append(save_model(m, tmp_path / f"{name}.safetensors"))
    return paths[0], paths[1]


def test_the_average_is_each_tensor_weighted_and_its_ends_are_the_inputs(tmp_path):
    a, b = _two_files(tmp_path)
    avg = _script().average
    ma, mb = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    soup, meta = avg(str(a), str(b), 0.25)
    for k, v in soup.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * ma[k] + 0.25 * mb[k])
    assert meta["alpha"] == 0.25 and len(meta["fingerprints"]) == 2
    assert avg(str(a), str(b), 0.0)[0].fingerprint() == load_model(a)[0].fingerprint()
    assert avg(str(a), str(b), 1.0)[0].fingerprint() == load_model(b)[0].fingerprint()


def test_models_of_different_configs_or_a_bad_alpha_are_refused(tmp_path):
    a, _ = _two_files(tmp_path)
    other = FusionModel(dataclasses.replace(FUSION_CONFIGS["fusion-spatial-tiny"], footprint=3))
    c = save_model(other, tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="different configs"):
        _script().average(str(a), str(c), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        _script().average(str(a), str(a), 1.5)
