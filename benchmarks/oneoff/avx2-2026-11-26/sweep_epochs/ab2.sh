#!/bin/bash
for i in 1 2; do
  /work/exp9/wtrain.sh w$i
  /work/exp9/sweep1.sh s$i 12
  /work/exp9/plain1.sh pe$i
done
echo done > /work/exp9/ab2.done
