#!/bin/bash
name=$1; st=/work/exp9/$name; rm -rf $st; mkdir -p $st; cp -r /work/exp/cache0 $st/cache
cd /work/main
.venv/bin/python /work/exp9/cpusample.py $st/cpu.jsonl & sp=$!
date +%s.%N > $st/t_start
.venv/bin/python -m wilson_ray train --config /work/exp9/plain12.yaml --steps 1 --cache-dir $st/cache --set run.progress=true 2>&1 | while IFS= read -r line; do echo "$(date +%s.%N) $line"; done > $st/train.log
date +%s.%N > $st/t_end
kill $sp
