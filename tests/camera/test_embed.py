"""Embed mode: gradients reach the camera encoder and the adapter only; harmless init; errors."""

from __future__ import annotations

import pytest
import torch

from deft_omni.camera import CameraError
from deft_omni.camera.extension import CameraExtension
from deft_omni.camera.frame import frame_from_shards
from deft_omni.data import OmniGenTrainProcessor
from deft_omni.data.processor import collate_processed
from deft_omni.training import DeftOmniModule
from deft_omni.model.latents import omnigen_condition as model_kwargs

from ._runs import read_samples


@pytest.fixture(scope="module")
def setup(tiny_model_dir, scene):
    torch.set_num_threads(1)
    frame, instruction, _ = frame_from_shards([scene["train"]])
    camera = CameraExtension({"mode": "embed"}, frame, instruction)
    module = DeftOmniModule(model={"path": str(tiny_model_dir)}, adapter={"method": "deft", "rank": 4,
                            "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}, verbose=False,
                            extensions=[camera])
    proc = OmniGenTrainProcessor(module.tokenizer, max_image_side=32, cfg_dropout=0.0,
                                 conditioners=[camera.conditioner()])
    samples = read_samples(scene["val"])[:4]
    batch = collate_processed([proc(s, train=False) for s in samples], pad_id=proc.pad_id)
    return module, camera, batch


def _forward(module, batch):
    x1, inputs = module.encode_batch(batch, "mean")
    t = torch.full((x1.shape[0],), 0.3)
    return module.transformer(hidden_states=x1, timestep=t, return_dict=False, **model_kwargs(batch, inputs))[0]


def test_gradients_reach_encoder_and_adapter_only(setup):
    module, camera, batch = setup
    module.zero_grad(set_to_none=True)
    with torch.no_grad():  # move the zero-init parts off zero so every encoder weight gets a gradient
        camera.encoder.token_mlp[-1].weight.normal_(0, 0.02)
        camera.encoder.ray_gate.fill_(0.1)
    try:
        with camera.batch_scope(batch):
            _forward(module, batch).pow(2).mean().backward()
        trainable = module.trainable_state()
        assert any(n.startswith("extension_modules.camera_encoder.") for n in trainable)
        for name, p in trainable.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        frozen = [n for n, p in module.transformer.named_parameters() if n not in trainable and p.grad is not None]
        assert frozen == [] and all(p.grad is None for p in module.vae.parameters())
        module.check_trainable()
        assert module.trainable_parameter_count == sum(p.numel() for p in module.parameters() if p.requires_grad)
        groups = {g["name"] for g in module.configure_optimizers()["optimizer"].param_groups}
        assert "camera" in groups
    finally:
        with torch.no_grad():
            camera.encoder.token_mlp[-1].weight.zero_()
            camera.encoder.ray_gate.zero_()
        module.zero_grad(set_to_none=True)


@torch.no_grad()
def test_init_is_harmless_and_cameras_matter(setup):
    module, camera, batch = setup
    with camera.batch_scope(batch):
        with_camera = _forward(module, batch)
    camera.hook.detach()
    try:
        plain = _forward(module, batch)
    finally:
        camera.hook.attach(module.transformer)
    assert torch.allclose(with_camera, plain, atol=1e-6)  # zero-init: the camera changes nothing yet
    camera.encoder.ray_gate.fill_(0.5)
    try:
        with camera.batch_scope(batch):
            a = _forward(module, batch)
        other = dict(batch, camera=batch["camera"].flip(0))
        with camera.batch_scope(other):
            b = _forward(module, other)
        assert not torch.allclose(a, b)
    finally:
        camera.encoder.ray_gate.zero_()


def test_camera_token_without_vectors_is_an_error(setup):
    module, camera, batch = setup
    with pytest.raises(CameraError, match="no camera vector was given"):
        _forward(module, batch)
