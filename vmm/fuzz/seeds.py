#!/usr/bin/env python3
"""Writes small seed inputs for the fuzz targets. For `dump`, into corpus/dump/: an ELF core, a
LiME capture and kdump-compressed files (seekable and flattened, zlib and raw pages), each
holding 4-level page tables at 0x1000 that map a few pages, so the fuzzer starts from
inputs that reach the walker. The first byte of an input picks how it is opened (0:
detected). For `api_request`, into corpus/api_request/: one valid request of each route."""
import os
import struct
import zlib

PAGE = 4096
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "dump")
os.makedirs(out, exist_ok=True)

# 8 pages of guest memory at GPA 0: PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000.
mem = bytearray(8 * PAGE)
struct.pack_into("<Q", mem, 0x1000, 0x2003)
struct.pack_into("<Q", mem, 0x2000, 0x3003)
struct.pack_into("<Q", mem, 0x3000, 0x4003)
struct.pack_into("<Q", mem, 0x3008, 0x200000 | 0xE3)
for i in range(4):
    struct.pack_into("<Q", mem, 0x4000 + 8 * i, (0x5000 + i * PAGE) | 0x63)


def note(name, kind, desc):
    n = name + b"\0"
    b = struct.pack("<III", len(n), len(desc), kind) + n
    b += b"\0" * (-len(b) % 4) + desc
    return b + b"\0" * (-len(b) % 4)


qemu = struct.pack("<II", 1, 440) + b"\0" * (392 - 8)
qemu += struct.pack("<5Q", 0x80050033, 0, 0, 0x1000, 0x20) + b"\0" * 8
notes = note(b"CORE", 1, b"\0" * 336) + note(b"QEMU", 0, qemu)


def elf():
    phnum = 2
    notes_at = 64 + 56 * phnum
    data_at = notes_at + len(notes)
    e = b"\x7fELF\x02\x01\x01" + b"\0" * 9
    e += struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    e += struct.pack("<IIQQQQQQ", 4, 0, notes_at, 0, 0, len(notes), len(notes), 4)
    e += struct.pack("<IIQQQQQQ", 1, 7, data_at, 0, 0, len(mem), len(mem), 0)
    return e + notes + bytes(mem)


def lime():
    return struct.pack("<IIQQQ", 0x4C694D45, 1, 0, len(mem) - 1, 0) + bytes(mem)


def kdump(compress, flattened):
    pages = [bytes(mem[i:i + PAGE]) for i in range(0, len(mem), PAGE)]
    half = PAGE
    header = bytearray(PAGE)
    header[:8] = b"KDUMP   "
    struct.pack_into("<I", header, 8, 6)
    struct.pack_into("<IIII", header, 428, PAGE, 1, 2, len(pages))
    struct.pack_into("<I", header, 460, 1)
    ram = bytearray(half)
    dumped = bytearray(half)
    kept = []
    for pfn, p in enumerate(pages):
        ram[pfn // 8] |= 1 << (pfn % 8)
        if any(p):
            dumped[pfn // 8] |= 1 << (pfn % 8)
            kept.append(p)
    descs_at = 2 * PAGE + 2 * half
    data_at = descs_at + 24 * len(kept)
    descs = b""
    data = b""
    for p in kept:
        body, flags = (zlib.compress(p), 1) if compress else (p, 0)
        descs += struct.pack("<QIIQ", data_at + len(data), len(body), flags, 0)
        data += body
    notes_at = data_at + len(data)
    sub = bytearray(PAGE)
    struct.pack_into("<QQ", sub, 48, notes_at, len(notes))
    struct.pack_into("<Q", sub, 96, len(pages))
    f = bytes(header) + bytes(sub) + bytes(ram) + bytes(dumped) + descs + data + notes
    if not flattened:
        return f
    s = bytearray(4096)
    s[:12] = b"makedumpfile"
    s[16:32] = struct.pack(">qq", 1, 1)
    for off in range(0, len(f), 8192):
        chunk = f[off:off + 8192]
        s += struct.pack(">qq", off, len(chunk)) + chunk
    return bytes(s + struct.pack(">qq", -1, -1))


seeds = {
    "elf": elf(),
    "lime": lime(),
    "kdump-raw": kdump(False, False),
    "kdump-zlib": kdump(True, False),
    "kdump-flat": kdump(True, True),
}
for name, body in seeds.items():
    with open(os.path.join(out, "seed-" + name), "wb") as f:
        f.write(b"\0" + body)
print("wrote", len(seeds), "seeds to", out)

# The `api_request` target: one valid request of every route (method index, path, NUL,
# query, NUL, body), into corpus/api_request/.
api_out = os.path.join(os.path.dirname(out), "api_request")
os.makedirs(api_out, exist_ok=True)
METHODS = ["GET", "PUT", "POST", "PATCH", "DELETE", "HEAD"]
requests = [
    ("GET", "/vm", "", b""),
    ("PATCH", "/vm", "", b'{"state":"Paused"}'),
    ("GET", "/vcpus/0/registers", "", b""),
    ("POST", "/translate", "", b'{"vcpu":0,"cr3":"0x1000","gvas":["0x400000","ffff_8000_0000_0000"],"format":"text"}'),
    ("GET", "/mappings", "vcpu=1&range=1000-2000&pte_level=true&format=tlb", b""),
    ("GET", "/memory", "gva=0x1000&vcpu=0&len=16", b""),
    ("POST", "/dirty/scan", "format=text", b"{}"),
    ("PUT", "/snapshot/create", "", b'{"dir":"/tmp/s","kind":"full"}'),
    ("PUT", "/actions", "", b'{"action":"shutdown"}'),
]
for i, (method, path, query, body) in enumerate(requests):
    with open(os.path.join(api_out, "seed-%d" % i), "wb") as f:
        f.write(bytes([METHODS.index(method)]) + path.encode() + b"\0" + query.encode() + b"\0" + body)
print("wrote", len(requests), "seeds to", api_out)
