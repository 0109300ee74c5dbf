# A deterministic, slow computation for the shim scenario: 750 steps of 0.1 s, each printing a running
# SHA-256. `--fast` skips the sleeps (the reference run). Run by the distribution's python3, unmodified.
import hashlib
import sys
import time

fast = "--fast" in sys.argv
h = hashlib.sha256()
for i in range(750):
    h.update(str(i * i).encode())
    print(i, h.hexdigest()[:24], flush=True)
    if not fast:
        time.sleep(0.1)
print("finished", h.hexdigest(), flush=True)
