#!/bin/bash
# alternate sweep (default env) / plain / sweep (niceness 0) / plain ...
for i in 1 2; do
  /work/exp9/sweep1.sh s_def$i 12
  /work/exp9/plain1.sh p$i
  RAY_worker_niceness=0 /work/exp9/sweep1.sh s_n0_$i 12
done
echo done > /work/exp9/ab.done
