#!/bin/bash
# fast_fp32 step 1 4x256: environment levers, alternated twice
cd /work/main
BASE=".venv/bin/python -m benchmarks.step --backbone resnet101 --method wilson --size 256 --batch 4 --step 1 --warmup 2 --iters 5 --threads 2 --json --no-flops --amp none"
declare -A ENVS
ENVS[base]=""
ENVS[nommap]="MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184"
ENVS[hugetlb]="GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
ENVS[bind]="OMP_PROC_BIND=close OMP_PLACES=cores"
ENVS[nommap_huge]="MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
for rep in 1 2; do
 for k in base nommap hugetlb bind nommap_huge; do
  echo "== $k rep $rep $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  env ${ENVS[$k]} $BASE > /tmp/lev/$k.$rep.json 2>/tmp/lev/$k.$rep.err
  python3 -c "
import json,sys;d=json.load(open('/tmp/lev/$k.$rep.json'));print({k:d.get(k) for k in ('median_s','cpu_s_per_iter','minor_faults_per_iter','peak_rss_mb','iter_s')})"
 done
done
