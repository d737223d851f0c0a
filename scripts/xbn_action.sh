#!/usr/bin/env bash
# The steps of xbn's GitHub Action (action.yml), as one script a test can run with a fake
# $GITHUB_STEP_SUMMARY and $GITHUB_OUTPUT: validate the inputs, run `xbn check`, write the
# Markdown summary, hand the report paths to the later steps, exit with xbn check's status
# (0 unchanged, 1 changed, 2 bad input).
#
# Inputs arrive as environment variables (the action maps its inputs onto them):
#   XBN_BASELINE      the snapshot to check (required)
#   XBN_SCENARIOS     scenario files to validate first (space-separated globs; optional)
#   XBN_DIVERGENCES   your known-divergences TOML (optional)
#   XBN_FRAMEWORKS    check only these of the snapshot's frameworks (comma-separated ids)
#   XBN_REQUIRE_ALL   "true": a framework the snapshot recorded that cannot run here fails
#   XBN_TOLERANCE     eps(dtype) units (empty: exact on the snapshot's CPU, else 16)
#   XBN_OUTPUT_DIR    where xbn.md and xbn.xml go (default: xbn-report)
set -uo pipefail

baseline="${XBN_BASELINE:?the baseline input is required (a snapshot from xbn snapshot)}"
out="${XBN_OUTPUT_DIR:-xbn-report}"
summary="${GITHUB_STEP_SUMMARY:-/dev/null}"
outputs="${GITHUB_OUTPUT:-/dev/null}"
mkdir -p "$out"

note() { printf '%s\n' "$*" >> "$summary"; }

# 1. the inputs, without importing a framework: a typo fails here in a second
files=("$baseline")
if [ -n "${XBN_SCENARIOS:-}" ]; then
  # shellcheck disable=SC2206  # the globs are meant to expand
  files+=(${XBN_SCENARIOS})
fi
if [ -n "${XBN_DIVERGENCES:-}" ]; then
  files+=("$XBN_DIVERGENCES")
fi
if ! xbn validate --quiet "${files[@]}" 2> "$out/validate.txt"; then
  cat "$out/validate.txt" >&2
  note "### xbn check: invalid input"
  note ""
  note '```'
  cat "$out/validate.txt" >> "$summary"
  note '```'
  echo "status=2" >> "$outputs"
  exit 2
fi

# 2. the check
args=(check "$baseline" --format markdown --output "$out/xbn.md" --junit "$out/xbn.xml")
[ "${XBN_REQUIRE_ALL:-false}" = "true" ] && args+=(--require-all)
[ -n "${XBN_TOLERANCE:-}" ] && args+=(--tolerance "$XBN_TOLERANCE")
[ -n "${XBN_FRAMEWORKS:-}" ] && args+=(--frameworks "$XBN_FRAMEWORKS")
[ -n "${XBN_DIVERGENCES:-}" ] && args+=(--divergences "$XBN_DIVERGENCES")
xbn "${args[@]}"
status=$?

# 3. the summary and the outputs for the later steps
if [ -f "$out/xbn.md" ]; then
  cat "$out/xbn.md" >> "$summary"
else
  note "### xbn check could not run (exit $status): see the job's log."
fi
{
  echo "status=$status"
  echo "report=$out/xbn.md"
  echo "junit=$out/xbn.xml"
} >> "$outputs"
exit "$status"
