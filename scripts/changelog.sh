#!/usr/bin/env bash
# CHANGELOG.md is rendered by antsibull-changelog from changelogs/ (changelog.yaml, the released
# versions, plus the fragments of the version in galaxy.yml, which is not released yet). The
# rendering runs on a scratch copy, so the fragments stay where they are until the release
# (`antsibull-changelog release` in the repository consumes them into changelog.yaml).
# Usage: scripts/changelog.sh           write CHANGELOG.md
#        scripts/changelog.sh --check   fail if CHANGELOG.md is not what the fragments render
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r galaxy.yml meta plugins changelogs "$scratch/"
version=$(sed -n 's/^version: *//p' galaxy.yml)
# The date goes into changelog.yaml only (not into CHANGELOG.md): any fixed one keeps it stable.
(cd "$scratch" && antsibull-changelog release --version "$version" --date 1970-01-01 >/dev/null)
if [ "${1:-}" = --check ]; then
  if ! diff -u CHANGELOG.md "$scratch/CHANGELOG.md"; then
    echo "CHANGELOG.md is not what changelogs/ renders: run scripts/changelog.sh" >&2
    exit 1
  fi
else
  cp "$scratch/CHANGELOG.md" CHANGELOG.md
fi
