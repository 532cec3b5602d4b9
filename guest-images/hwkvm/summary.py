#!/usr/bin/env python3
"""Summary of one run.sh boot, from serial.ts.log (each console line prefixed with the host's
seconds since QEMU started): boot time, one line per command from its @@@ BEGIN/END
markers, the built-in guest's descriptor features and whether the JSON walk shows the
1 GiB leaf at 0xc0000000. Exits 1 when anything failed, so run.sh can exit with it.

Usage: summary.py SERIAL_TS_LOG QEMU_EXIT_STATUS TOTAL_SECONDS TIMINGS_OUT
"""
import json, re, sys
path, qemu_rc, total, timings_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
# newline="\n": a stray carriage return inside a console line must not split it.
lines = []
for raw in open(path, errors="replace", newline="\n"):
    stamp, _, text = raw.rstrip("\n").partition(" ")
    try:
        lines.append((float(stamp), text.replace("\r", "")))
    except ValueError:
        continue
ok = True
init_at = None
done = False
kvm = None
flags = None
commands = []          # [name, begin time, end time or None, rc or None, guest secs]
current = None
body = {}              # name -> its output lines
features = []
gib_leaf = False
silent = None          # run.sh's note when the host printed nothing for too long
for t, text in lines:
    if text.startswith("@@@ INIT"):
        init_at = t
    elif text.startswith("@@@ KVM"):
        kvm = text[4:]
    elif text.startswith("@@@ CPUFLAGS"):
        flags = text[13:]
    elif text.startswith("@@@ BEGIN "):
        current = [text[10:], t, None, None, None]
        commands.append(current)
        body[current[0]] = []
    elif text.startswith("@@@ END ") and current is not None:
        m = re.search(r"rc=(\d+) secs=([\d.]+)", text)
        current[2], current[3], current[4] = t, int(m.group(1)), m.group(2)
        current = None
    elif text.startswith("@@@ ALL DONE"):
        done = True
    elif "@@@ HOST SILENT" in text:
        silent = text[text.index("@@@ HOST SILENT") + 4:]
    elif current is not None:
        body[current[0]].append(text)
        m = re.search(r"features (0x[0-9a-f]+)", text)
        if m and "descriptor:" in text:
            features.append((current[0], m.group(1)))
        if text.startswith("{"):
            try:
                rec = json.loads(text)
            except ValueError:
                continue
            if rec.get("va") == "0xc0000000" and rec.get("size") == 1073741824:
                gib_leaf = True

out = []
out.append(f"qemu exit status {qemu_rc}" + (" (timed out)" if qemu_rc == 124 else ""))
if init_at is None:
    out.append("FAIL the host never reached /init"); ok = False
else:
    out.append(f"boot to /init  {init_at:8.1f} s")
if kvm is None or not kvm.startswith("KVM ok"):
    out.append(f"FAIL /dev/kvm: {kvm}"); ok = False
else:
    out.append(kvm)
if flags:
    out.append("CPU flags " + flags)
for name, begin, end, rc, secs in commands:
    if end is None:
        out.append(f"FAIL {name}: no END marker (hung or crashed; see the serial log)"); ok = False
    else:
        status = "ok  " if rc == 0 else "FAIL"
        if rc != 0:
            ok = False
        out.append(f"{status} {name:40s} rc={rc:<3d} {end - begin:8.1f} s")
# Why each failed command failed: Rust's panic lines and the assertion lines after them.
for name, _, end, rc, _ in commands:
    if end is not None and rc == 0:
        continue
    excerpt = []
    lines_of = body.get(name, [])
    for i, text in enumerate(lines_of):
        if "panicked at" in text:
            excerpt += lines_of[i:i + 4]
    if excerpt:
        out.append(f"---- {name}:")
        out += ["    " + l[:300] for l in excerpt]
if not commands and init_at is not None:
    out.append("FAIL no command ran"); ok = False
if silent is not None:
    out.append(f"FAIL {silent}"); ok = False
if not done:
    out.append("FAIL the host did not finish its command list"); ok = False
if qemu_rc != 0:
    ok = False
# Why the host died, when its own kernel failed (run.sh: a soft lockup panics it). Only
# the reason: such a run already fails above (no END marker, no ALL DONE). Only for a
# host that did not finish: the commands' own output (a guest's console, such as the
# Linux guest's pvpanic crash) may hold the same words in a run that passed.
for _, text in lines if not done else []:
    if "soft lockup" in text or "Kernel panic" in text:
        out.append("host kernel: " + text.strip()[:200])
        break
for name, value in features:
    out.append(f"descriptor features {value} (from {name}; bit0 1 GiB leaf, bit1 PCID, bit2 LA57, bit3 NX)")
if any(c[0] == "vmm-walk-json" for c in commands):
    out.append("walk JSON has a 1 GiB leaf at 0xc0000000: " + ("yes" if gib_leaf else "no"))
out.append(f"total          {float(total):8.1f} s")
passed = sum(1 for c in commands if c[2] is not None and c[3] == 0)
# The plain closing line CI log readers understand.
out.append(f"hwkvm: {passed} passed, {len(commands) - passed} failed")
out.append("RESULT " + ("PASS" if ok else "FAIL"))
text = "\n".join(out)
print(text)
with open(timings_path, "w") as f:
    f.write(text + "\n")
sys.exit(0 if ok else 1)
