#!/usr/bin/env bash
# The probe on a fresh host: its CPU as lscpu and the kernel see it, then probe.py; logs into $OUT.
set -uo pipefail
HERE=results/h200-large-probe
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
make -C native -j16 PYTHON=python3 >"$OUT/native-build.log" 2>&1 || echo "native build failed"
{ lscpu; echo; grep -m1 "model name" /proc/cpuinfo; grep -m1 "cpu MHz" /proc/cpuinfo; nproc; free -g; } >"$OUT/cpu.txt" 2>&1
uptime >"$OUT/uptime.txt"
python3 "$HERE/probe.py" "${ROUNDS:-3}" 2>&1 | tee "$OUT/probe.txt"
uptime >>"$OUT/uptime.txt"
