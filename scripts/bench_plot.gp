# Latency against throughput for witan and etcd, from scripts/bench.sh.
# Called as: gnuplot -e "datafile='...'; outfile='...'; subtitle='...'" bench_plot.gp
# datafile: index 0 = witan, index 1 = etcd; in each, block 0 = put (1, 64,
# 256 clients), block 1 = linearizable range (1, 64 clients); columns:
# requests/s, p50 ms, p99 ms, scenario.
set terminal pngcairo size 1000,600 font ",10" noenhanced
set output outfile
set title "witan vs etcd, 3 members on loopback: median latency (lines) and p99 (dashes)\n".subtitle
set xlabel "throughput (requests/s)"
set ylabel "latency (ms)"
set logscale xy
set grid
set key top left
plot datafile index 0 every :::0::0 using 1:2 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "witan put p50", \
     datafile index 0 every :::0::0 using 1:3 with linespoints dt 2 pt 7 lc rgb "#1f77b4" title "witan put p99", \
     datafile index 1 every :::0::0 using 1:2 with linespoints lw 2 pt 5 lc rgb "#d62728" title "etcd put p50", \
     datafile index 1 every :::0::0 using 1:3 with linespoints dt 2 pt 5 lc rgb "#d62728" title "etcd put p99", \
     datafile index 0 every :::1::1 using 1:2 with linespoints lw 2 pt 9 lc rgb "#17becf" title "witan range p50", \
     datafile index 1 every :::1::1 using 1:2 with linespoints lw 2 pt 11 lc rgb "#ff7f0e" title "etcd range p50", \
     datafile index 0 every :::0::0 using 1:2:4 with labels offset 0,1 font ",8" notitle, \
     datafile index 1 every :::0::0 using 1:2:4 with labels offset 0,1 font ",8" notitle
