#!/usr/bin/env bash
# Builds the libFuzzer harnesses from the same sources as the extension
# (clang -fsanitize=fuzzer,address,undefined) and runs each for SECONDS
# (default 60).  Fails on any crash, leak or sanitizer report.
#   csrc/fuzz/run.sh [SECONDS] [harness ...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
secs="${1:-60}"; shift || true
harnesses=("${@:-reply ehlo body sasl engine render}")
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
declare -A deps=([reply]="proto/reply.c" [ehlo]="proto/reply.c proto/ehlo.c" [body]="proto/body.c" [sasl]="proto/sasl.c"
              [engine]="proto/engine.c proto/body.c proto/cmd.c proto/verdict.c" [render]="proto/render.c")
# the engine with a small pipeline bound and BDAT gate, so that serial jobs and
# gated bodies are reached in a few bytes
declare -A defs=([engine]="-DMX_PIPELINE_MAX=6 -DMX_BDAT_BLIND_MAX=8192")
for h in ${harnesses[@]}; do
  srcs=""
  for f in ${deps[$h]}; do srcs="$srcs $here/../$f"; done
  clang -g -O1 -std=c11 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
        ${defs[$h]:-} -I"$here/../proto" "$here/fuzz_$h.c" $srcs -o "$out/fuzz_$h"
  mkdir -p "$out/corpus_$h"
  echo "== fuzz_$h for ${secs}s"
  # new inputs go to the scratch corpus; the committed seeds stay as they are
  "$out/fuzz_$h" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="$out/" \
      "$out/corpus_$h" "$here/corpus/$h" 2>&1 | grep -E "stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY|crash-|Done" || true
  found=0
  for f in "$out"/crash-* "$out"/leak-* "$out"/timeout-* "$out"/oom-*; do
    [ -e "$f" ] || continue
    found=1
    echo "fuzz_$h found a failing input: $(basename "$f")"
    od -A x -t x1z "$f" | head -20
  done
  [ "$found" = 0 ] || exit 1
done
