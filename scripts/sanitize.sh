#!/usr/bin/env bash
# compute-sanitizer over the CUDA backend: memcheck, initcheck, racecheck and synccheck, each run
# over `ironmoe-check --device cuda` and over a sanitizer-sized subset of the CUDA tests (a gtest
# filter per test binary: small sizes, every kernel and both plan layouts; the sanitizers slow
# kernels down 10-100x). Prints one summary line per tool and exits non-zero when any run reports
# an error (--error-exitcode 1) or fails.
#
#   scripts/sanitize.sh [BUILD_DIR [PROGRAM...]]     (default: build, every program)
#
# PROGRAM names one of the runs below (ironmoe-check, route, plan, gather-combine, stage-capture,
# layer-capture, experts, fused-decode, fp8, fp8-hopper, layer), to sanitize only those; fp8-hopper
# is the part of fp8 that runs the Hopper FP8 GEMM, plus one streamed and one CUDA-core scheme.
# The full log goes to $OUT/sanitize.log ($OUT unset: ./out). ironmoe-check or a test binary
# that was not built is reported as missing and counts as a failure.
set -uo pipefail

build=${1:-build}
shift $(($# > 0 ? 1 : 0))
selected=" $* "
out=${OUT:-out}
mkdir -p "$out"
log="$out/sanitize.log"
: >"$log"

if ! command -v compute-sanitizer >/dev/null 2>&1; then
  for dir in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
    [ -x "$dir/compute-sanitizer" ] && PATH="$dir:$PATH"
  done
fi
if ! command -v compute-sanitizer >/dev/null 2>&1; then
  echo "sanitize: compute-sanitizer not found" | tee -a "$log"
  exit 1
fi

# Each program: "name|executable|arguments". Filters keep every kernel and both layouts at sizes
# around the chunk and warp boundaries, without the long sweeps (those run unsanitized in ctest).
tests="$build/tests/cuda"
programs=(
  "ironmoe-check|$build/tools/ironmoe-check|--device cuda"
  "route|$tests/cuda_test_route|--gtest_filter=*grouped_topk_E256_k8_f32:*softmax_topk_E128_k8_bf16:*sigmoid_topk_E512_k16_f16:*softmax_topk_E8_k2_f32:RouteEdges.NumValidTokensOnTheDevice:RouteEdges.GroupShapes"
  "plan|$tests/cuda_test_plan|--gtest_filter=Tokens/PlanBoundary.*/T0:Tokens/PlanBoundary.*/T1:Tokens/PlanBoundary.*/T255:Tokens/PlanBoundary.*/T257:Tokens/PlanBoundary.*/T2049:PlanEdges.NumValidTokensClamped"
  "gather-combine|$tests/cuda_test_gather_combine|--gtest_filter=*H2048_pad0_off0:*bf16_H333_pad3_off1:*f32_H1000_pad8_off0"
  "stage-capture|$tests/cuda_test_stage_capture|--gtest_filter=*/T1:*/T33:*/T257:*/T2049"
  "layer-capture|$tests/cuda_test_layer_capture|--gtest_filter=*/T7:*/T300"
  "experts|$tests/cuda_test_experts|--gtest_filter=*small*_stream:*f16*_stream:*decode*:*few_rows*:ExpertsCuda.RangesOutsideTheBuffersAreEmpty:ExpertsCuda.GraphReplayFollowsNewCountsAndInputs"
  "fused-decode|$tests/cuda_test_fused_decode|"
  "fp8|$tests/cuda_test_fp8|"
  "fp8-hopper|$tests/cuda_test_fp8|--gtest_filter=*grouped_gemm*:*OnTheGroupedGemm:*ForcedShape*:*fp8_block_bf16_weight_stream:*fp8_tensor_bf16_cuda_cores"
  "fp8-gathered|$tests/cuda_test_fp8|--gtest_filter=*GatheredInput*"
  "layer|$tests/cuda_test_layer|--gtest_filter=Scaled/*qwen3_30b_a3b_bf16_contiguous:Scaled/*deepseek_v3_bf16_batched:Scaled/*mixtral_8x7b_f32_contiguous"
)

# One tool's pass over the selected programs, sequentially; its log goes to $1, its summary line
# to stdout. The four tools run side by side (the sanitizers are bound by host-side work, and the
# GPU has room for all four), which cuts the wall time about fourfold.
run_tool() {
  local tool=$1 tool_log=$2 passed=0 failed=() entry name exe args start
  : >"$tool_log"
  for entry in "${programs[@]}"; do
    IFS='|' read -r name exe args <<<"$entry"
    [ "$selected" = "  " ] || [[ "$selected" == *" $name "* ]] || continue
    # By default fp8 runs whole, which includes fp8-hopper.
    [ "$selected" = "  " ] && [ "$name" = fp8-hopper ] && continue
    if [ ! -x "$exe" ]; then
      echo "== $tool $name: missing $exe" >>"$tool_log"
      failed+=("$name(missing)")
      continue
    fi
    echo "== $tool $name: $exe $args" >>"$tool_log"
    start=$SECONDS
    # shellcheck disable=SC2086  # args is a list of arguments
    if compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 "$exe" $args \
        >>"$tool_log" 2>&1; then
      passed=$((passed + 1))
    else
      failed+=("$name")
    fi
    echo "== $tool $name: $((SECONDS - start)) s" >>"$tool_log"
  done
  if [ ${#failed[@]} -eq 0 ]; then
    echo "sanitize: $tool: PASS ($passed programs)"
  else
    echo "sanitize: $tool: FAIL in ${failed[*]} ($passed passed)"
    return 1
  fi
}

tools=(memcheck initcheck racecheck synccheck)
pids=()
for tool in "${tools[@]}"; do
  run_tool "$tool" "$log.$tool" >"$log.$tool.summary" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
for tool in "${tools[@]}"; do
  cat "$log.$tool" >>"$log"
  tee -a "$log" <"$log.$tool.summary"
  rm -f "$log.$tool" "$log.$tool.summary"
done
exit $status
