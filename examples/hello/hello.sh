#!/bin/sh
# Greets its argument (default: world).
name=${1:-world}
echo "hello, $name"
