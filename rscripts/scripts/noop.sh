#!/bin/sh
# wfe-rscript: 1
# name: noop
# version: 1.0
# interpreter: sh
# description: succeed at once with an empty result, for benchmarks and smoke tests
# timeout: 60
# requires: cpus=1

# Takes no parameters and does not read them; starts no other program.
if [ -n "${WFE_RESULT:-}" ]; then
    printf '{}\n' >"$WFE_RESULT" || exit 1
fi
