import sys, statistics, collections
d=collections.defaultdict(lambda: ([],[]))
for line in open(sys.argv[1]):
    p=line.split()
    if len(p)<3: continue
    d[p[0]][0].append(float(p[1])); d[p[0]][1].append(float(p[2]))
for k,(w,c) in d.items():
    print(f"{k:28s} n={len(w):2d} wall median {statistics.median(w):7.1f} min {min(w):7.1f} ms | cpu median {statistics.median(c):7.1f} min {min(c):7.1f} ms")
