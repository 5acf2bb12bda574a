"""Runtime policy: memory mode "low" keeps the model on the CPU and moves each submodel to the device while it
runs; precision "auto" resolution per memory mode."""

from __future__ import annotations

import pytest
import torch

from imaginairy import ImaginePrompt, pipeline
from imaginairy.models.cache import ModelCache
from imaginairy.models.runtime import PRECISION_DTYPES, load_model, model_device, offloads, submodel_on


class MoveRecorder:
    """Stands in for a submodel: records where it is moved."""

    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(str(device))
        return self


@pytest.mark.parametrize("memory_mode, moves", [("low", ["cuda", "cpu"]), ("mid", []), ("high", [])])
def test_only_memory_mode_low_moves_a_submodel_to_the_device_and_back(memory_mode, moves):
    submodel, seen_inside = MoveRecorder(), []
    with submodel_on(submodel, torch.device("cuda"), memory_mode):
        seen_inside.extend(submodel.moves)
    assert submodel.moves == moves
    assert seen_inside == moves[:1]  # on the device while the block runs
    assert offloads(memory_mode) == (memory_mode == "low")


def test_a_cpu_run_never_moves_submodels():
    submodel = MoveRecorder()
    with submodel_on(submodel, torch.device("cpu"), "low"):
        pass
    assert submodel.moves == []


def test_memory_mode_low_loads_the_model_on_the_cpu_whatever_the_device(tiny_models):
    """No CUDA needed: with mode low the model is never put on the requested device at load time."""
    cache = ModelCache(max_bytes=2**30)
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="full", memory_mode="low")
    model = load_model(prompt, "cuda", cache)
    assert model_device(model).type == "cpu"
    assert len(cache) == 1 and any("cpu" in key for key in cache._models)


def test_the_pipeline_runs_every_submodel_under_the_prompts_memory_mode(tiny_models, monkeypatch):
    model = load_model(ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), precision="full"), "cpu",
                       ModelCache(max_bytes=2**30))
    wrapped = []
    original = pipeline.submodel_on

    def recording_submodel_on(submodel, device, memory_mode):
        wrapped.append((submodel, memory_mode))
        return original(submodel, device, memory_mode)

    monkeypatch.setattr(pipeline, "submodel_on", recording_submodel_on)
    prompt = ImaginePrompt("x", model=str(tiny_models["tiny-sd15"]), steps=1, seed=1, precision="full",
                           memory_mode="low", safety_mode="off")
    pipeline.generate(prompt, model, device=torch.device("cpu"))
    assert [mode for _, mode in wrapped] == ["low"] * len(wrapped)
    # the text encoder, the VAE (encoding the edit's inputs, then decoding), the UNet
    assert sorted(map(id, (submodel for submodel, _ in wrapped))) == sorted(
        map(id, (model.cond_stage_model, model.first_stage_model, model.first_stage_model, model.model))
    )


def test_precision_dtypes():
    assert PRECISION_DTYPES == {
        "full": torch.float32, "autocast": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16
    }  # fmt: skip
