#!/usr/bin/env bash
# A/B of two builds in one run on one machine: the tree at hand against an earlier revision,
# ironmoe-bench run once per build and round, the builds alternating within each round (so drift
# of clocks or temperature falls on both alike), then one line per (preset, tokens) with each
# build's median over the rounds and the change of the tree against the base
# (scripts/ab_summary.py); stopped by a time limit or ^C, the summary of the runs that finished.
#
#   scripts/ab-builds.sh prepare REV      where git is: the sources of REV into ab-base/
#                                         (git-ignored; a device call carries it with
#                                         carry ["third_party", "ab-base"])
#   scripts/ab-builds.sh ROUNDS [ironmoe-bench options...]
#                                         builds ironmoe-bench from ab-base/ (build-ab-base/) and
#                                         from the tree (build-ab-tree/), then runs the rounds
#   e.g. scripts/ab-builds.sh 2 --device cuda --preset qwen3-30b-a3b --tokens 1,2,4 --iters 50
#
# IRONMOE_CUDA=OFF builds without CUDA (a CPU A/B with --device cpu). Both builds take CUTLASS
# from this tree's third_party/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ $# -lt 1 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
if [ "$1" = prepare ]; then
  [ $# -eq 2 ] || { echo "usage: $0 prepare REV" >&2; exit 2; }
  rm -rf ab-base
  mkdir ab-base
  git archive "$2" | tar -x -C ab-base
  git rev-parse "$2" >ab-base/.ab-revision
  echo "ab-base/ holds $(git rev-parse --short "$2")"
  exit 0
fi
rounds=$1
shift
[ -f ab-base/CMakeLists.txt ] || { echo "no ab-base/: run $0 prepare REV first" >&2; exit 2; }
cuda=${IRONMOE_CUDA:-ON}
cores=$(nproc)
build_bench() {  # SOURCE BUILD_DIR
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DIRONMOE_CUDA="$cuda" \
    -DIRONMOE_BUILD_TESTS=OFF -DIRONMOE_CUTLASS_DIR="$root/third_party/cutlass" >/dev/null
  cmake --build "$2" -j "$cores" --target ironmoe-bench >/dev/null
}
# git archive stamps every file with the commit's time, so a build-ab-base/ left by an earlier
# call (a warm device machine keeps it) looks newer than another revision's sources and ninja
# would keep the old objects: the base is rebuilt from scratch whenever its revision changed.
if ! cmp -s ab-base/.ab-revision build-ab-base/.ab-revision 2>/dev/null; then
  rm -rf build-ab-base
fi
echo "== building ab-base/ and the tree" >&2
build_bench ab-base build-ab-base
cp ab-base/.ab-revision build-ab-base/.ab-revision 2>/dev/null || true
build_bench . build-ab-tree
# shellcheck source=scripts/ab_rounds.sh
source "$root/scripts/ab_rounds.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ab_init build "$work" base tree
for ((round = 1; round <= rounds; ++round)); do
  for variant in base tree; do
    echo "== $variant, round $round" >&2
    bench=build-ab-tree/tools/ironmoe-bench
    [ "$variant" = base ] && bench=build-ab-base/tools/ironmoe-bench
    ab_run "$variant" "$round" "$bench" "$@"
  done
done
ab_summary
