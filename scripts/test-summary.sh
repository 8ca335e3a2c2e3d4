#!/usr/bin/env bash
# Runs `dotnet test` over the solution and prints one closing line "N passed, N failed, N skipped".
set -uo pipefail
log=$(mktemp)
dotnet test RestoreFs.sln -c "${CONFIGURATION:-Release}" --no-build "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=0 failed=0 skipped=0
while read -r line; do
  f=$(sed -n 's/.*Failed: *\([0-9]*\).*/\1/p' <<<"$line")
  p=$(sed -n 's/.*Passed: *\([0-9]*\).*/\1/p' <<<"$line")
  s=$(sed -n 's/.*Skipped: *\([0-9]*\).*/\1/p' <<<"$line")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${s:-0}))
done < <(grep -E '^(Passed|Failed)! +- +Failed:' "$log")
echo
# The names of failed tests again at the end, where a log's tail shows them.
if grep -qE '^ +Failed [^ ]' "$log"; then
  echo "failed tests:"
  grep -E '^ +Failed [^ ]' "$log" | sed 's/^ */  /' | sort -u
fi
rm -f "$log"
echo "tests: $passed passed, $failed failed, $skipped skipped"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "dotnet test exited with $status" >&2
fi
exit "$status"
