#!/usr/bin/env python3
"""Sums a `perf record -g` of vaultfleet-vault-bench into cost categories, for the
fleet's run (every thread but bound-*) and the bound's (bound-*). Usage:
  perf record -F 999 -g -o vault.perf.data target/release/vaultfleet-vault-bench
  python3 benches/vault-profile.py vault.perf.data
"""
import re, subprocess, sys
data = sys.argv[1]
out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "comm,dso,sym",
                      "--stdio", "-g", "none", "--percent-limit", "0"],
                     capture_output=True, text=True).stdout
cats = [
    ("Ristretto255/Ed25519 arithmetic (OPAQUE, signatures)", r"curve25519|ed25519|ristretto|Scalar52|FieldElement"),
    ("Argon2id (client KSF)", r"argon2|blake2"),
    ("SHA-2 / HMAC / AEAD (sealing, digests)", r"sha2|sha512|sha256|hmac|chacha|poly1305|aes"),
    ("malloc/free/memcpy", r"malloc|free|memmove|memcpy|memset|_int_|unlink_chunk|memcmp|realloc"),
    ("protobuf encode/decode", r"protobuf"),
    ("sled", r"sled"),
    ("kernel", r"^\[k\]"),
]
tot = {"fleet": {}, "bound": {}}
for line in out.splitlines():
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+(\[.\])\s+(.*)$", line)
    if not m:
        continue
    pct, comm, dso, kind, sym = float(m[1]), m[2], m[3], m[4], m[5]
    side = "bound" if comm.startswith("bound-") else "fleet"
    key = "other user space"
    for name, pat in cats:
        if re.search(pat, (kind + " " + sym) if name == "kernel" else sym, re.I) or (name == "kernel" and kind == "[k]"):
            key = name
            break
    if comm.startswith("vaultfleet-vau") and key.startswith("Argon2"):
        continue  # the main thread's KSF microbench, not the run
    tot[side][key] = tot[side].get(key, 0) + pct
for side in ("fleet", "bound"):
    s = sum(tot[side].values())
    print(f"{side}: {s:.1f}% of samples")
    for k, v in sorted(tot[side].items(), key=lambda kv: -kv[1]):
        print(f"  {k:<55} {100*v/s:5.1f}%")
