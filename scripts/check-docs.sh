#!/usr/bin/env bash
# The README and docs speak of the product: fails, naming file and line, on the words of how it
# was made (work sessions, issue numbers, review notes), commit hashes, home-directory paths and
# paths outside the repository that a reader does not have. The product's own places under a
# user's home (the decoded-image cache, shell completions) are allowed.
set -euo pipefail
cd "$(dirname "$0")/.."
pattern='[Ss]ession [0-9]+|[Ii]ssue [0-9]+|\(issue|review mend|~/(?!\.cache/moco-rs|\.local/share/bash-completion)|/root/|/home/|\.\./shared/|\b(commit|hash) [0-9a-f]{7,40}\b|\b[0-9a-f]{7}\b \('
if grep -rnP "$pattern" README.md docs/*.md; then
  echo "check-docs: README.md and docs/ must speak of the product (the lines above)" >&2
  exit 1
fi
echo "check-docs: README.md and docs/ clean" >&2
