#!/bin/sh
# wfe-rscript: 1
# name: sleep_echo
# version: 1.0
# interpreter: sh
# description: print a message some lines, sleep, then exit with a chosen code
# timeout: 3600
# param message: str = "" the text of each line
# param seconds: float = 0 how long to sleep after printing
# param exit_code: int = 0 the exit status to end with (0-255)
# param lines: int = 1 how many times to print the message
# requires: cpus=1

# Written for plain sh so that it starts fast: no python unless the message has JSON
# escapes. Params are read from the JSON file at $WFE_PARAMS (or stdin) as data and never
# evaluated. `param KEY` sets $tok to the raw JSON token of KEY in the flat params object
# (empty when KEY is absent): a string token without escapes, or a number/true/false/null.
# It is exact for objects whose keys are the declared parameter names (validate_params
# guarantees that): only a key can be followed by ':'.

die() {
    printf 'sleep_echo: %s\n' "$1" >&2
    exit 2
}

if [ -n "${WFE_PARAMS:-}" ]; then
    P=$(cat -- "$WFE_PARAMS") || die "can't read params file $WFE_PARAMS"
else
    P=$(cat)
fi

param() {
    tok='' rest=$P
    while :; do
        case $rest in *"\"$1\""*) ;; *) return 0 ;; esac
        rest=${rest#*"\"$1\""}
        rest=${rest#"${rest%%[![:space:]]*}"}
        case $rest in :*) break ;; esac
    done
    rest=${rest#:}
    rest=${rest#"${rest%%[![:space:]]*}"}
    case $rest in
    \"*)
        rest=${rest#\"}
        tok=\"${rest%%\"*}\"
        ;;
    *) tok=${rest%%[],\}[:space:]]*} ;;
    esac
}

uint() { # uint KEY DEFAULT -> $val, a non-negative integer
    param "$1"
    val=${tok:-$2}
    case $val in '' | *[!0-9]*) die "parameter '$1' must be a non-negative int, got $val" ;; esac
}

uint lines 1
lines=$val
uint exit_code 0
[ "$val" -le 255 ] || die "parameter 'exit_code' must be 0-255, got $val"
exit_code=$val

param seconds
seconds=${tok:-0}
case $seconds in
'' | [!0-9.]* | *[!0-9.eE+-]*) die "parameter 'seconds' must be a non-negative number, got $seconds" ;;
esac

param message
message_json=${tok:-'""'}
case $message_json in
\"*\\*)
    # JSON escapes: let python decode, printing the JSON token and then the text.
    out=$(printf '%s' "$P" | python3 -I -S -c 'import json, sys
m = json.load(sys.stdin).get("message", "")
if not isinstance(m, str):
    sys.exit("sleep_echo: parameter message must be str")
sys.stdout.write(json.dumps(m) + "\n" + m + ".")') || exit 2
    NL='
'
    message_json=${out%%"$NL"*}
    message=${out#*"$NL"}
    message=${message%.}
    ;;
\"*) message=${message_json#\"} message=${message%\"} ;;
*) die "parameter 'message' must be str, got $message_json" ;;
esac

i=0
while [ "$i" -lt "$lines" ]; do
    printf '%s\n' "$message"
    i=$((i + 1))
done

case $seconds in
0 | 0.0 | 0e0) ;;
*) sleep "$seconds" || die "can't sleep $seconds seconds" ;;
esac

if [ -n "${WFE_RESULT:-}" ]; then
    printf '{"results": {"message": %s, "lines": %s, "seconds": %s, "exit_code": %s}}\n' \
        "$message_json" "$lines" "$seconds" "$exit_code" >"$WFE_RESULT" || exit 2
fi
exit "$exit_code"
