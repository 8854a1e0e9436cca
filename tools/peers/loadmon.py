#!/usr/bin/env python3
"""Background CPU load monitor for run_all.sh: how busy the machine was with other work.

Every --interval seconds appends `unix_time  busy_cores  ours_cores` to OUT: busy_cores is the
whole machine's non-idle CPU (from /proc/stat), ours_cores the CPU of processes in session SID
(run_all.sh and everything it started), both in cores. compare.py averages busy - ours over each
result's time window: the cores that other processes took while that system was measured.
Processes that start and end between two samples are missed; the benchmarks are long-lived.
"""

import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    return sum(v[:8]) - v[3] - v[4]


def session_ticks(sid):
    """{pid: utime + stime} of the processes in session sid."""
    ticks = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()  # after "pid (comm) "
        if int(fields[3]) == sid:  # field 6 (session) is the 4th after comm
            ticks[int(pid)] = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks


def main():
    out, sid = sys.argv[1], int(sys.argv[2])
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    prev = (time.time(), busy_ticks(), session_ticks(sid))
    while True:
        time.sleep(interval)
        now = (time.time(), busy_ticks(), session_ticks(sid))
        dt = now[0] - prev[0]
        busy = (now[1] - prev[1]) / HZ / dt
        # per process, so that one exiting does not take its past CPU out of the sum (its last
        # partial interval is lost); a new one counts from zero
        ours = sum(t - prev[2].get(pid, 0) if t >= prev[2].get(pid, 0) else t  # a reused pid
                   for pid, t in now[2].items()) / HZ / dt
        with open(out, "a") as f:
            f.write(f"{now[0]:.1f}\t{busy:.3f}\t{min(ours, busy):.3f}\n")
        prev = now


if __name__ == "__main__":
    main()
