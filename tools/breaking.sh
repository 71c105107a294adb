#!/usr/bin/env bash
# buf breaking (FILE level, see buf.yaml): the contracts evolve additively.
#
# The contracts were frozen at the commit named in .ci/contracts-baseline. Every commit
# after it that touched proto/ or buf.yaml is checked against its parent, so each change
# is judged against the contracts as they were on main just before it, and a field added
# later cannot be removed later either. A breaking intermediate commit must be squashed
# away before landing. Needs the full git history (not a shallow clone).
#
#   tools/breaking.sh            check as above
#   tools/breaking.sh REF        check the working tree against REF only
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-.venv/bin/buf}

if [[ $# -gt 0 ]]; then
  exec "$BUF" breaking --against ".git#ref=$1"
fi

base=$(grep -v '^#' .ci/contracts-baseline | head -n1 | tr -d '[:space:]')
if ! git cat-file -e "${base}^{commit}" 2>/dev/null; then
  # A shallow clone lacks the history: try to fetch it before giving up.
  git fetch --quiet --unshallow 2>/dev/null || true
fi
if ! git cat-file -e "${base}^{commit}" 2>/dev/null; then
  echo "breaking: baseline commit $base is not in this clone; clone with full history" >&2
  exit 2
fi

checked=0
# buf clones the repository to read a ref, 50 commits deep by default: a parent further
# back than that "does not match any file". Ask for the whole history.
depth=$(( $(git rev-list --count HEAD) + 1 ))
# The working tree against HEAD (uncommitted edits), then each commit against its parent.
if ! git diff --quiet HEAD -- proto buf.yaml; then
  echo "breaking: working tree vs HEAD"
  "$BUF" breaking --against ".git#ref=HEAD,depth=$depth"
  checked=$((checked + 1))
fi
for c in $(git rev-list "$base..HEAD" -- proto buf.yaml); do
  echo "breaking: $(git log -1 --format='%h %s' "$c") vs its parent"
  tmp=$(mktemp -d)
  git worktree add --quiet --detach "$tmp" "$c"
  (cd "$tmp" && "$OLDPWD/$BUF" breaking --against "$OLDPWD/.git#ref=$c^,depth=$depth") || { git worktree remove --force "$tmp"; exit 1; }
  git worktree remove --force "$tmp"
  checked=$((checked + 1))
done
echo "breaking: $checked change(s) since the baseline $base checked, none breaking"
