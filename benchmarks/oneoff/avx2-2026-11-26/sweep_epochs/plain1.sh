#!/bin/bash
name=$1; st=/work/exp9/$name; rm -rf $st; mkdir -p $st
cd /work/main
.venv/bin/python /work/exp9/cpusample.py $st/cpu.jsonl & sp=$!
.venv/bin/python /work/exp9/plain_epochs.py /work/exp9/plain12.yaml /work/exp/cache0 save > $st/plain.json 2>$st/err.log
kill $sp
