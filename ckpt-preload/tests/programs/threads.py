# A pool of three worker threads computing hash chains handed out through a queue, one at a time; the
# main thread prints each result in order, then joins the workers.
import hashlib
import queue
import sys
import threading

work, results = queue.Queue(), queue.Queue()


def worker():
    while True:
        i = work.get()
        if i is None:
            return
        h = hashlib.sha256(str(i).encode())
        for _ in range(3000):
            h = hashlib.sha256(h.digest())
        results.put((i, h.hexdigest()[:16]))


threads = [threading.Thread(target=worker) for _ in range(3)]
for t in threads:
    t.start()
for i in range(int(sys.argv[1])):
    work.put(i)
    print(*results.get(), flush=True)
for t in threads:
    work.put(None)
for t in threads:
    t.join()
print("joined")
