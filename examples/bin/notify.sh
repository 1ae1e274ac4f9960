#!/bin/sh
# Called by the `notify` exec tool of examples/exec-and-webhook.yaml as a program with an argv
# (reflexd never builds a shell command line):
#   notify.sh SYMBOL PRICE QTY TEXT
# Each argument is one value from the event, whatever it holds (spaces, quotes, `;` ...).
# Appends one line to $NOTIFY_LOG (set by the tool's `env`). A retry of the same call has the
# same EVENT_ID and REFLEXD_CALL_ID: a call already written is not written twice.
set -eu
# The tool puts `--` before the first argument that comes from the event (options_end: true),
# so no event value can be read as an option.
if [ "${1:-}" = "--" ]; then shift; fi
log="${NOTIFY_LOG:?NOTIFY_LOG is not set}"
mkdir -p "$(dirname "$log")"
touch "$log"
if grep -q "^$REFLEXD_CALL_ID " "$log"; then
    exit 0
fi
printf '%s %s %s %s %s\n' "$REFLEXD_CALL_ID" "$1" "$2" "$3" "$4" >> "$log"
