#!/usr/bin/env bash
# Crash-safety check at scale: index a 5,000-image collection without interruption, index it again but
# kill -9 the indexer at a random moment, resume, and compare the two indexes.
#   scripts/check-resume.sh [N]      (run from the repository root after `make setup`)
set -euo pipefail
N=${1:-5000}
M=.venv/bin/mmodal
D=data/resume-check-$N
rm -rf "$D/reference" "$D/resumed"
test -f "$D/shapes/dataset.json" || $M data shapes --out "$D/shapes" --n "$N" --seed 77 --split test --queries 50
$M index "$D/shapes/images" --index "$D/reference" 2>/dev/null | tail -3

$M index "$D/shapes/images" --index "$D/resumed" --batch-size 32 >/dev/null 2>&1 &
PID=$!
DELAY=$(python3 -c "import random; print(round(random.uniform(3, 12), 1))")
sleep "$DELAY"
kill -9 $PID
wait $PID 2>/dev/null || true
count() { python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from items').fetchone()[0])" "$1/metadata.sqlite"; }
echo "killed with kill -9 after ${DELAY}s, $(count "$D/resumed") images committed"
$M index "$D/shapes/images" --index "$D/resumed" 2>/dev/null | tail -3

python3 - "$D/resumed/metadata.sqlite" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
items = db.execute("select count(*), count(distinct content_hash) from items").fetchone()
files = db.execute("select count(*), count(distinct path) from files").fetchone()
print(f"resumed index: {items[0]} items ({items[1]} distinct hashes), {files[0]} file rows ({files[1]} distinct paths)")
PY
same=0
total=0
for q in "a red circle left of a blue square" "two green stars" "a large white hexagon" "a purple star and a cyan hexagon" "a small yellow triangle"; do
  total=$((total + 1))
  A=$($M search "$q" --index "$D/reference" --json -k 10 2>/dev/null | python3 -c "import json,sys; print([(r['path'], r['score']) for r in json.load(sys.stdin)])")
  B=$($M search "$q" --index "$D/resumed" --json -k 10 2>/dev/null | python3 -c "import json,sys; print([(r['path'], r['score']) for r in json.load(sys.stdin)])")
  if [ "$A" == "$B" ]; then same=$((same + 1)); else echo "different top 10 for: $q"; fi
done
echo "same top-10 results and scores for $same of $total queries"
[ "$same" -eq "$total" ]
