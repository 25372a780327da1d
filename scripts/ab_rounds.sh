# shellcheck shell=bash
# Sourced by scripts/ab-env.sh and scripts/ab-builds.sh: runs each ironmoe-bench of an A/B in the
# background and waits for it, so that a time limit's TERM (or ^C) stops the run at once and
# still prints the rounds that finished (scripts/ab_summary.py) instead of losing all of them.
#
#   ab_init LABEL WORK_DIR VARIANT...     the summary's label, where the runs go, the variants
#   ab_run VARIANT ROUND COMMAND...       one run: COMMAND --json WORK_DIR/VARIANT-ROUND.json
#   ab_summary                            one line per (preset, tokens)
ab_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ab_init() {
  ab_label=$1
  ab_work=$2
  shift 2
  ab_variants=("$@")
  ab_child=
  trap ab_stop TERM INT
}

ab_summary() {
  python3 "$ab_dir/ab_summary.py" "$ab_label" "$ab_work" "${ab_variants[@]}"
}

ab_stop() {
  if [ -n "$ab_child" ]; then kill "$ab_child" 2>/dev/null || true; fi
  echo "== stopped before the last run: the runs that finished" >&2
  ab_summary
  exit 124
}

ab_run() {
  local variant=$1 round=$2
  shift 2
  local log="$ab_work/$variant-$round.log"
  # The JSON gets its name only when the run completed, so a stopped run is never summarised.
  "$@" --json "$ab_work/$variant-$round.partial" >"$log" 2>&1 &
  ab_child=$!
  if ! wait "$ab_child"; then
    ab_child=
    cat "$log" >&2
    exit 1
  fi
  ab_child=
  mv "$ab_work/$variant-$round.partial" "$ab_work/$variant-$round.json"
}
