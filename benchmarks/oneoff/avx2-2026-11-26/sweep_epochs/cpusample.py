"""Every 1 s: per-process CPU seconds (utime+stime), nice, cmdline -> jsonl."""

import json
import os
import sys
import time

out = open(sys.argv[1], "a")
hz = os.sysconf("SC_CLK_TCK")
while True:
    snap = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            st = open(f"/proc/{pid}/stat").read()
            fields = st[st.rfind(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / hz
            if cpu < 0.05:
                continue
            nice = int(fields[16])
            ppid = int(fields[1])
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")[:160]
        except Exception:
            continue
        snap[pid] = [cpu, nice, cmd, ppid]
    out.write(json.dumps({"t": time.time(), "p": snap}) + "\n")
    out.flush()
    time.sleep(1)
