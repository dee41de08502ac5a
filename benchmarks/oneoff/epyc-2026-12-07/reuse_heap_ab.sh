#!/bin/bash
# product code: --reuse-heap vs --no-reuse-heap, fast path in fp32 (--amp none), alternated
cd /work/main
for cfg in "4 256" "2 512"; do set -- $cfg
for rep in 1 2 3; do
 for k in no-reuse-heap reuse-heap; do
  .venv/bin/python -m benchmarks.step --backbone resnet101 --method wilson --size $2 --batch $1 --step 1 --warmup 2 --iters 5 --threads 2 --json --no-flops --amp none --$k > /tmp/lev/p.$1x$2.$k.$rep.json 2>/tmp/lev/p.err
  python3 -c "
import json;d=json.load(open('/tmp/lev/p.$1x$2.$k.$rep.json'));print('$1x$2 $k $rep', round(d['median_s'],3), d['minor_faults_per_iter'], d['peak_rss_mb'], d.get('loadavg_start'))"
 done; done; done
