#!/usr/bin/env python3
"""What run-ci.sh runs again after failed run.sh boots: every command of the list that has
not passed yet, one "NAME::COMMAND" line each. A test executable (a name starting "test:")
runs again only for what it has not passed, replayed over every run so far:
  - a run that ended with failures: next time only the tests that printed "... FAILED"
    (`NAME... --exact`);
  - a run that never ended (the host hung or died): next time the same tests less those
    that printed "... ok", so the stuck one and those after it run again;
  - a run that ended with an error and no failed test (a crash): the same again.
Anything else runs again whole. A command has passed once one of its runs ended with 0.

Usage: retry.py LIST SERIAL_TS_LOG...   (LIST: the default "NAME<TAB>COMMAND" lines; the
logs of the runs so far, oldest first)
"""
import re, sys


def parse(path):
    """name -> (rc or None if it never ended, ok tests, failed tests) for one run's log."""
    runs, current = {}, None
    for raw in open(path, errors="replace", newline="\n"):
        _, _, text = raw.rstrip("\n").partition(" ")
        text = text.replace("\r", "")
        if text.startswith("@@@ BEGIN "):
            current = text[10:].strip()
            runs[current] = [None, [], []]
        elif text.startswith("@@@ END ") and current is not None:
            m = re.search(r"rc=(\d+)", text)
            runs[current][0] = int(m.group(1)) if m else 1
            current = None
        elif current is not None:
            m = re.match(r"test (\S+) \.\.\. (ok|FAILED)$", text.strip())
            if m:
                runs[current][1 if m.group(2) == "ok" else 2].append(m.group(1))
    return runs


list_path, logs = sys.argv[1], [parse(p) for p in sys.argv[2:]]
for line in open(list_path):
    line = line.rstrip("\n")
    if not line or line.startswith("#"):
        continue
    name, _, command = line.partition("\t")
    # ("skip", names): every test but these; ("only", names): just these.
    mode, names, passed = "skip", [], False
    for runs in logs:
        if name not in runs:
            continue  # not in that run's list (passed before) or never started
        rc, ok, failed = runs[name]
        if rc == 0:
            passed = True
            break
        if rc is not None and failed:
            mode, names = "only", failed
        elif rc is None and mode == "only":
            names = [t for t in names if t not in ok]
        elif rc is None:
            names = names + [t for t in ok if t not in names]
    if passed:
        continue
    if name.startswith("test:") and names:
        if mode == "only":
            command += " " + " ".join(names) + " --exact"
        else:
            command += "".join(f" --skip {t}" for t in names) + " --exact"
    print(f"{name}::{command}")
