#!/bin/bash
cd /work/main
ARGS="--backbone resnet101 --method wilson --size ${SIZE:-256} --batch ${BATCH:-4} --step 1 --warmup 2 --iters 5 --threads 2 --json --no-flops $EXTRA"
TAG=${TAG:-fp32}
for rep in 1 2 3; do
 for k in ${KS:-base mallopt hugetlb both}; do
  case $k in
   base) CMD="env .venv/bin/python -m benchmarks.step";;
   mallopt) CMD="env .venv/bin/python benchmarks/oneoff/epyc-2026-12-07/mallopt_run.py";;
   hugetlb) CMD="env GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python -m benchmarks.step";;
   both) CMD="env GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python benchmarks/oneoff/epyc-2026-12-07/mallopt_run.py";;
  esac
  $CMD $ARGS > /tmp/lev/$TAG.$k.$rep.json 2>/tmp/lev/$TAG.$k.$rep.err
  python3 -c "
import json;d=json.load(open('/tmp/lev/$TAG.$k.$rep.json'));print('$k $rep', round(d['median_s'],3), d['minor_faults_per_iter'], d['peak_rss_mb'])"
 done
done
