#!/bin/bash
# $1 name, $2 epochs, extra env passed through
name=$1; ep=$2; st=/work/exp9/$name; rm -rf $st; mkdir -p $st; cp -r /work/exp/cache0 $st/step_cache
cd /work/main
.venv/bin/python /work/exp9/cpusample.py $st/cpu.jsonl & sp=$!
date +%s.%N > $st/t_start
.venv/bin/python -m wilson_ray sweep --space /work/exp/e1/space.yaml --storage $st --data-root $PWD/data/synthetic --num-cpus 2 --trainer direct --quiet --set incremental.max_iters_per_epoch=null --set incremental.epochs=$ep > $st/sweep.log 2>&1
date +%s.%N > $st/t_end
kill $sp
