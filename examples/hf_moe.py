"""Hugging Face transformers models running their MoE layers on ironmoe.

Builds small Qwen3-MoE and Mixtral models from configs with random weights (nothing is
downloaded), once with ``experts_implementation="eager"`` (transformers' reference loop) and once
with ``"ironmoe"`` (registered by ``ironmoe.integrations.transformers.register()``), loads the same
weights into both, and checks that the logits agree within the dtype's tolerance and that greedy
generation picks the same tokens. Prints the speed of a forward pass of each (and of
transformers' ``"grouped_mm"`` where it runs). Exits non-zero when a comparison fails.

    python examples/hf_moe.py [--device cpu|cuda] [--tokens 64]
"""

import argparse
import copy
import sys
import time

import torch
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen3MoeConfig

import ironmoe.integrations.transformers as ironmoe_hf

# max |ironmoe - eager| / max |eager| over the logits: float32 differs only in summation order;
# bfloat16 rounds every layer's activations, and the two orders' roundings compound over layers.
LOGIT_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


def small_configs():
    common = dict(vocab_size=512, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)
    return {
        "qwen3-moe": Qwen3MoeConfig(intermediate_size=512, moe_intermediate_size=128,
                                    num_experts=32, num_experts_per_tok=8, head_dim=64,
                                    **common),
        "mixtral": MixtralConfig(intermediate_size=384, num_local_experts=8,
                                 num_experts_per_tok=2, **common),
    }


def build(config, implementation, dtype, device, state=None):
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config),
                                             experts_implementation=implementation)
    if state is not None:
        model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()


def median_seconds(fn, repeats=5):
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def compare(name, config, dtype, device, tokens, new_tokens=12, seed=0):
    """Logit error, whether greedy generation agrees, and forward times; one row per call."""
    torch.manual_seed(seed)
    eager = build(config, "eager", dtype, device)
    ours = build(config, ironmoe_hf.NAME, dtype, device, eager.state_dict())
    prompt = torch.randint(0, config.vocab_size, (2, tokens), device=device)
    with torch.no_grad():
        reference = eager(prompt).logits.float()
        logits = ours(prompt).logits.float()
        error = ((logits - reference).abs().max() / reference.abs().max()).item()
        greedy = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        same_tokens = torch.equal(eager.generate(prompt[:, :8], **greedy),
                                  ours.generate(prompt[:, :8], **greedy))
        times = {"eager": median_seconds(lambda: eager(prompt)),
                 "ironmoe": median_seconds(lambda: ours(prompt))}
        if device != "cpu":
            grouped = build(config, "grouped_mm", dtype, device, eager.state_dict())
            times["grouped_mm"] = median_seconds(lambda: grouped(prompt))
    return {"model": name, "dtype": str(dtype).replace("torch.", ""), "device": device,
            "logit_error": error, "tolerance": LOGIT_TOLERANCE[dtype],
            "same_greedy_tokens": same_tokens, "times_ms": {k: 1e3 * v for k, v in times.items()}}


def passed(row):
    # Greedy tokens must agree exactly in float32; in bfloat16 a near-tie between two logits may
    # legitimately flip, so there the logit tolerance is the test.
    return row["logit_error"] <= row["tolerance"] and (row["same_greedy_tokens"] or
                                                       row["dtype"] != "float32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=64, help="prompt tokens per sequence")
    args = parser.parse_args()
    ironmoe_hf.register()
    ok = True
    for name, config in small_configs().items():
        for dtype in (torch.float32, torch.bfloat16):
            row = compare(name, config, dtype, args.device, args.tokens)
            ok &= passed(row)
            times = ", ".join(f"{k} {v:.1f} ms" for k, v in row["times_ms"].items())
            print(f"{row['model']:10s} {row['dtype']:9s} {row['device']:5s} "
                  f"logit error {row['logit_error']:.1e} (allowed {row['tolerance']:.0e}), "
                  f"greedy tokens {'same' if row['same_greedy_tokens'] else 'DIFFER'}; "
                  f"forward: {times}  {'PASS' if passed(row) else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
