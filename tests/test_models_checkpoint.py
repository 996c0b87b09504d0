"""Model directories: safetensors + model card; nothing unpickled; every fault is refused."""

import json
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch

from models.checkpoint import (
    CARD,
    WEIGHTS,
    CheckpointError,
    load_model,
    load_training_state,
    read_card,
    sha256_file,
    write_model_dir,
)
from models.disarm import Disarm, one_hot
from models.harmonize import Harmonizer
from models.networks import get_config
from models.trainer import DisarmTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model_dir(path, name="reference", scanners=("A", "B"), seed=0, training_state=None):
    torch.manual_seed(seed)
    cfg = get_config(name, n_scanners=len(scanners))
    model = Disarm(cfg)
    card = {
        "name": "test",
        "config": cfg.to_dict(),
        "scanners": list(scanners),
        "scanner_codes": {s: [0.1 * i] * cfg.z_dim for i, s in enumerate(scanners)},
    }
    write_model_dir(path, model.state_dict(), card, training_state=training_state)
    return model


def head(shape=(14, 17, 12)):
    rng = np.random.default_rng(0)
    data = rng.random(shape, dtype=np.float32) * 500 + 100
    return nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.mark.parametrize("name", ["reference", "fast"])
def test_round_trip_bit_identical(tmp_path, name):
    model = make_model_dir(tmp_path / "m", name).eval()
    loaded, card = load_model(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert card["weights_sha256"] == sha256_file(tmp_path / "m" / WEIGHTS)
    # and a second directory written from the loaded model gives identical harmonizations
    write_model_dir(tmp_path / "m2", loaded.state_dict(), read_card(tmp_path / "m"))
    a, _ = Harmonizer.from_dir(tmp_path / "m", "cpu").harmonize(head(), mode="target", target="B")
    b, _ = Harmonizer.from_dir(tmp_path / "m2", "cpu").harmonize(head(), mode="target", target="B")
    assert np.array_equal(a.get_fdata(), b.get_fdata())


def test_pickle_posing_as_checkpoint_is_refused(tmp_path):
    make_model_dir(tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS

    class Boom:
        def __reduce__(self):  # would run if anything unpickled the file
            return (exec, ("raise SystemExit('unpickled!')",))

    torch.save({"enc_b.net.0.1.weight": torch.zeros(1), "boom": Boom()}, weights)
    with pytest.raises(CheckpointError, match="does not match its model card"):
        load_model(tmp_path / "m")
    # even with a card that vouches for the pickle, it is not read as weights
    card = json.loads((tmp_path / "m" / CARD).read_text())
    card["weights_sha256"] = sha256_file(weights)
    (tmp_path / "m" / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(tmp_path / "m")
    weights.write_bytes(pickle.dumps({"a": 1}))
    card["weights_sha256"] = sha256_file(weights)
    (tmp_path / "m" / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError):
        Harmonizer.from_dir(tmp_path / "m", "cpu")


def test_truncated_safetensors_is_refused(tmp_path):
    make_model_dir(tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(tmp_path / "m")
    card = json.loads((tmp_path / "m" / CARD).read_text())
    card["weights_sha256"] = sha256_file(weights)
    (tmp_path / "m" / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path / "m")


def test_mismatched_configuration_is_refused(tmp_path):
    make_model_dir(tmp_path / "m", "reference")
    card = json.loads((tmp_path / "m" / CARD).read_text())
    card["config"]["content_channels"] = 12
    (tmp_path / "m" / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "m")
    card["config"]["bogus"] = 1
    (tmp_path / "m" / CARD).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="invalid network configuration"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / CARD).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a DISARM model directory"):
        load_model(tmp_path / "nowhere")


def test_training_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Disarm(get_config("fast", n_scanners=2))
    tr = DisarmTrainer(model, total_steps=4)
    x = torch.rand(1, 1, 8, 8, 8)
    tr.step(x, x.flip(2), one_hot([0], 2), one_hot([1], 2))
    state = {"step": 1, "trainer": tr.state_dict()}
    card = {"name": "t", "config": model.cfg.to_dict(), "scanners": ["A", "B"]}
    write_model_dir(tmp_path / "c", model.state_dict(), card, training_state=state)
    back = load_training_state(tmp_path / "c")
    tr2 = DisarmTrainer(Disarm(model.cfg), total_steps=4)
    tr2.load_state_dict(back["trainer"])
    assert tr2.iteration == 1 and back["step"] == 1
    s1, s2 = tr.optims["gen"].state_dict(), tr2.optims["gen"].state_dict()
    for k in s1["state"]:
        assert torch.equal(s1["state"][k]["exp_avg"], s2["state"][k]["exp_avg"])
    assert tr2.schedulers["gen"].last_epoch == tr.schedulers["gen"].last_epoch


def test_existing_directory_replaced_only_when_complete(tmp_path):
    make_model_dir(tmp_path / "m", seed=0)
    first = read_card(tmp_path / "m")["weights_sha256"]
    make_model_dir(tmp_path / "m", seed=1)
    assert read_card(tmp_path / "m")["weights_sha256"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary left behind
