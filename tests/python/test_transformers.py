"""The transformers integration: models built with experts_implementation="ironmoe" give the
logits and greedy tokens of experts_implementation="eager" (examples/hf_moe.py's comparison),
and experts modules ironmoe cannot run exactly fall back to transformers' batched_mm."""

import pathlib
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")  # python-test.sh installs it

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "examples"))
import hf_moe  # noqa: E402

import ironmoe  # noqa: E402
import ironmoe.integrations.transformers as ironmoe_hf  # noqa: E402

ironmoe_hf.register()


@pytest.mark.parametrize("name", ["qwen3-moe", "mixtral"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_models_match_eager(name, dtype):
    row = hf_moe.compare(name, hf_moe.small_configs()[name], dtype, "cpu", tokens=16,
                         new_tokens=6)
    assert row["logit_error"] <= row["tolerance"], row
    if dtype == torch.float32:
        assert row["same_greedy_tokens"], row


def test_ironmoe_runs_the_experts(monkeypatch):
    calls = []
    original = ironmoe.fused_experts
    monkeypatch.setattr(ironmoe, "fused_experts", lambda *a, **k: calls.append(1) or
                        original(*a, **k))
    config = hf_moe.small_configs()["mixtral"]
    model = hf_moe.build(config, ironmoe_hf.NAME, torch.float32, "cpu")
    with torch.no_grad():
        model(torch.randint(0, config.vocab_size, (1, 5)))
    assert len(calls) == config.num_hidden_layers


def test_unsupported_activation_falls_back_to_batched_mm(monkeypatch):
    config = hf_moe.small_configs()["mixtral"]
    config.hidden_act = "gelu_pytorch_tanh"
    eager = hf_moe.build(config, "eager", torch.float32, "cpu")
    ours = hf_moe.build(config, ironmoe_hf.NAME, torch.float32, "cpu", eager.state_dict())
    monkeypatch.setattr(ironmoe, "fused_experts", None)  # must not be reached
    prompt = torch.randint(0, config.vocab_size, (1, 7))
    with torch.no_grad():
        assert torch.allclose(ours(prompt).logits, eager(prompt).logits, atol=1e-5)


def test_float16_on_the_cpu_falls_back_to_batched_mm(monkeypatch):
    config = hf_moe.small_configs()["mixtral"]
    eager = hf_moe.build(config, "eager", torch.float16, "cpu")
    ours = hf_moe.build(config, ironmoe_hf.NAME, torch.float16, "cpu", eager.state_dict())
    monkeypatch.setattr(ironmoe, "fused_experts", None)  # must not be reached
    prompt = torch.randint(0, config.vocab_size, (1, 7))
    with torch.no_grad():
        assert torch.allclose(ours(prompt).logits.float(), eager(prompt).logits.float(),
                              rtol=1e-2, atol=2e-2)


def test_transformers_training_gets_the_expert_gradients():
    # A model trained with experts_implementation="ironmoe": loss.backward() must give the expert
    # weights (and everything before the MoE block, through it) the gradients of "eager".
    config = hf_moe.small_configs()["mixtral"]
    torch.manual_seed(0)
    eager = hf_moe.build(config, "eager", torch.float32, "cpu").train()
    ours = hf_moe.build(config, ironmoe_hf.NAME, torch.float32, "cpu",
                        eager.state_dict()).train()
    prompt = torch.randint(0, config.vocab_size, (1, 7))
    for model in (eager, ours):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model(prompt, labels=prompt).loss.backward()
    name = "model.layers.0.mlp.experts.gate_up_proj"
    grad_eager = dict(eager.named_parameters())[name].grad
    grad_ours = dict(ours.named_parameters())[name].grad
    assert grad_eager is not None and grad_eager.abs().sum() > 0
    assert grad_ours is not None, "ironmoe's experts gave the expert weights no gradient"
    assert torch.allclose(grad_ours, grad_eager, rtol=1e-3, atol=1e-5)
