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
  # Then each distinct error message (its first lines): a class fixture that failed gives the same one for every test.
  echo "failure messages:"
  awk '
    /^ +Failed [^ ]/ { name = $2; grab = 0; next }
    /^ +Error Message:/ { grab = 1; n = 0; msg = ""; next }
    grab && (/^ +Stack Trace:/ || /^ +Standard Output Messages:/) {
      grab = 0
      if (!(msg in seen)) { seen[msg] = 1; printf "  %s:\n%s", name, msg }
      next
    }
    grab && n < 12 { msg = msg "    " $0 "\n"; n++ }
  ' "$log"
fi
rm -f "$log"
echo "tests: $passed passed, $failed failed, $skipped skipped"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  echo "dotnet test exited with $status" >&2
fi
exit "$status"
