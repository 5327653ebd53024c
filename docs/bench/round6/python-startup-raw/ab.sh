#!/usr/bin/env bash
# usage: ab.sh N placement configs...   config = name:python:pythonpath:script:implargs
N=$1; PL=$2; shift 2
out=/tmp/hpy2-m/res-$PL.txt; : > $out
for i in $(seq $N); do
  for cfg in "$@"; do
    IFS=: read name py pp script impl <<<"$cfg"
    cd /tmp
    r=$(PYTHONPATH=$pp perf stat -x, -e task-clock -o /tmp/hpy2-m/ps.txt $py $script --s9-first --placement $PL $impl 2>/dev/null | tail -1)
    cpu=$(grep task-clock /tmp/hpy2-m/ps.txt | cut -d, -f1)
    echo "$name $r $cpu" >> $out
  done
done
