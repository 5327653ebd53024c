#!/usr/bin/env python3
"""Table of the Python scenarios: mpserver-py beside mpservice 0.12.9 and
0.16.8 (figures from mpservice_bench.py, one JSON object per line).

Usage: py_report.py RESULTS.jsonl... > python.md
"""

import json
import sys

CONTENDERS = ['mpserver-py', 'mpservice-0.12.9', 'mpservice-0.16.8']
# A previous build of mpserver-py measured in the same sitting (relabel its
# figures' "contender" to this name), shown after the others when present.
BEFORE = 'mpserver-py-before'
# mpserver-py with worker processes spawned instead of forked by its fork
# server (``--start-method spawn``), shown when present.
SPAWN = 'mpserver-py-spawn'
# Metrics where smaller is better.
LOWER = ('_us', '_ms', '_mib', '_per_item')


def fmt(v):
    if v is None:
        return 'n/a'
    if v >= 10000:
        return f'{v:,.0f}'
    if v >= 100:
        return f'{v:.0f}'
    return f'{v:.3g}'


def main(paths):
    figs = {}
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if not line.startswith('{'):
                    continue
                d = json.loads(line)
                key = (d['scenario'], d['placement'], d['metric'], d['unit'])
                figs.setdefault(key, {})[d['contender']] = d
    shown = CONTENDERS + [
        c for c in (SPAWN, BEFORE) if any(c in row for row in figs.values())
    ]
    print('# Python scenarios: mpserver-py beside mpservice\n')
    print(
        'The same scenario script and worker code (`benches/python/mpservice_bench.py`; '
        'for mpserver-py only the import differs), in one sitting '
        '(`benches/python/run_python.sh`). Median of the runs [min-max]; the ratio is '
        'mpserver-py against the better mpservice (> 1 is better).\n'
    )
    print('| scenario | placement | metric | ' + ' | '.join(shown) + ' | vs best mpservice |')
    print('|---|---|---|' + '---:|' * len(shown) + '---:|')
    for key in sorted(figs):
        scenario, placement, metric, unit = key
        row = figs[key]
        cells = []
        for c in shown:
            d = row.get(c)
            cells.append('n/a' if d is None else f"{fmt(d['median'])} [{fmt(d['min'])}-{fmt(d['max'])}]")
        lower = metric.endswith(LOWER)
        ours = row.get('mpserver-py', {}).get('median')
        others = [row[c]['median'] for c in CONTENDERS[1:] if c in row]
        ratio = '-'
        if ours and others and metric not in ('loop_count', 'mean_batch_size'):
            best = min(others) if lower else max(others)
            if best > 0 and ours > 0:
                r = best / ours if lower else ours / best
                ratio = f'**{r:.2f}**'
        arrow = '↓' if lower else '↑'
        print(f'| {scenario} | {placement} | {metric} ({unit}) {arrow} | ' + ' | '.join(cells) + f' | {ratio} |')


if __name__ == '__main__':
    main(sys.argv[1:])
