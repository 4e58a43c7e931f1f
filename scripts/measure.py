#!/usr/bin/env python3
"""Runs one stage under /usr/bin/time -v and appends its costs as a JSON line.

usage: measure.py RESULTS.jsonl STAGE IMAGES -- COMMAND...

Records wall, user and system seconds and the peak resident set from /usr/bin/time -v, and
samples /proc every 0.2 s for the peak of anonymous memory (heap, tensors) apart from mapped
files (the decoded store, shared libraries): a memory-mapped store counts in the resident set
as it is read, but the kernel can drop those pages at any time, while anonymous memory is what
a run really needs. Time the command spends stopped (SIGSTOP, to keep another job's timing
clean) is summed as paused_s and left out of wall_s, which is the stage's own time. The
command's stderr goes to RESULTS.STAGE.log; the last line of its stdout (the --json result) is
kept in the record.
"""
import json
import os
import re
import subprocess
import sys
import time


def child_pids(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def rss_kb(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0])
    except OSError:
        pass
    return out


def stopped(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def field(text, name):
    m = re.search(re.escape(name) + r":\s*(.+)", text)
    return m.group(1).strip() if m else None


def wall_seconds(s):
    parts = [float(p) for p in s.split(":")]
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return secs


def main():
    results, stage, images = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cmd = sys.argv[sys.argv.index("--") + 1:]
    log = f"{results}.{stage}.log"
    timing = f"{results}.{stage}.time"
    with open(log, "w") as err, open(f"{results}.{stage}.out", "w") as out:
        p = subprocess.Popen(["/usr/bin/time", "-v", "-o", timing, *cmd], stdout=out, stderr=err)
        peak = {"RssAnon": 0, "RssFile": 0}
        paused = 0.0
        last = time.monotonic()
        while p.poll() is None:
            now = time.monotonic()
            children = child_pids(p.pid)
            if children and all(stopped(c) for c in children):
                paused += now - last
            last = now
            for c in children:
                for k, v in rss_kb(c).items():
                    if k in peak:
                        peak[k] = max(peak[k], v)
            time.sleep(0.2)
    text = open(timing).read()
    stdout = open(f"{results}.{stage}.out").read().strip().splitlines()
    try:
        result = json.loads(stdout[-1]) if stdout else None
    except json.JSONDecodeError:
        result = None
    rec = {
        "stage": stage,
        "images": images,
        "rc": p.returncode,
        "wall_s": round(wall_seconds(field(text, "Elapsed (wall clock) time (h:mm:ss or m:ss)")) - paused, 2),
        "paused_s": round(paused, 1),
        "user_s": float(field(text, "User time (seconds)")),
        "sys_s": float(field(text, "System time (seconds)")),
        "max_rss_mb": round(int(field(text, "Maximum resident set size (kbytes)")) / 1024, 1),
        "peak_anon_mb": round(peak["RssAnon"] / 1024, 1),
        "peak_file_mb": round(peak["RssFile"] / 1024, 1),
        "cmd": " ".join(cmd),
        "result": result,
    }
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"{stage}: rc {rec['rc']}, {rec['wall_s']} s wall, {rec['user_s']} s user, "
          f"max RSS {rec['max_rss_mb']} MB (anon {rec['peak_anon_mb']} MB)", file=sys.stderr)
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
