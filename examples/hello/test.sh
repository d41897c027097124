#!/bin/sh
# The example's test suite: plain sh, so it runs in any banger image.
set -u
fail=0
expect() { # expect OUTPUT ARGS...
  want=$1; shift
  got=$(./hello.sh "$@")
  if [ "$got" = "$want" ]; then
    echo "ok   hello.sh $* -> $got"
  else
    echo "FAIL hello.sh $* -> '$got', want '$want'"
    fail=1
  fi
}
expect "hello, world"
expect "hello, banger" banger
expect "hello, two words" "two words"
[ $fail -eq 0 ] && echo "all tests passed" || echo "some tests failed"
exit $fail
