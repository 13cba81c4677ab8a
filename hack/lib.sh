# Shared by the hack/ scripts: where the cache lives, the pinned versions, and how a
# step runs (log to a file, one clear line on failure, never a half-written cache entry).
# shellcheck shell=bash

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_DIR="$(dirname "$HACK_DIR")"
# Outside the repository so a fresh clone reuses it; keyed by version inside.
CACHE_DIR="${RHIZEPTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rhizeption}"
LOG_DIR="$CACHE_DIR/logs"
# shellcheck source=versions.env
. "$HACK_DIR/versions.env"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

mkdir -p "$LOG_DIR"

say() { printf 'bootstrap: %s\n' "$*"; }

# run_step NAME FUNCTION [ARGS...]: run FUNCTION with its output in $LOG_DIR/NAME.log.
# On failure print one line naming the step and the log, and exit.
run_step() {
	local name="$1"; shift
	local log="$LOG_DIR/$name.log" start=$SECONDS rc
	# Not `if ! "$@"`: bash ignores errexit inside a function called as a condition,
	# so a failing command in the middle of a step would go unnoticed.
	set +e
	(set -e; "$@") >"$log" 2>&1
	rc=$?
	set -e
	if ((rc != 0)); then
		printf 'bootstrap: step "%s" failed; see %s\n' "$name" "$log" >&2
		tail -n 5 "$log" | sed 's/^/  | /' >&2
		exit 1
	fi
	say "$name: $(tail -n 1 "$log") ($((SECONDS - start)) s)"
}

# cache_entry_ok DIR KEY: true when DIR was completed for exactly KEY.
# Entries are built in DIR.partial and renamed into place only after a
# .complete file is written, so an interrupted build is never trusted.
cache_entry_ok() {
	[[ -f "$1/.complete" && "$(cat "$1/.complete")" == "$2" ]]
}

# cache_entry_commit PARTIAL DIR KEY: mark PARTIAL complete and move it to DIR.
cache_entry_commit() {
	printf '%s' "$3" >"$1/.complete"
	rm -rf "$2"
	mv "$1" "$2"
}

# content_key FILE... : a short hash of the files' contents (not their paths, so every
# checkout of the same pins shares the entry), to key a cache entry.
content_key() {
	cat -- "$@" | sha256sum | cut -c1-16
}
