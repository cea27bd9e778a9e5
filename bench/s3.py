"""A run store on an S3-compatible server vs on local disk: capture + metrics of the same tiny study, side by side.

    .venv/bin/python bench/s3.py [--n-calibration 48]

Starts moto's standalone S3 server on a free local port (a real S3 API over HTTP, in this process's threads; a
remote bucket adds network latency on top), points `AWS_ENDPOINT_URL` at it, then runs `test_resnet` on the
`synthetic` dataset into a temporary folder and into `s3://chanaxis-bench/run.zarr`, and prints each stage's wall
time and the ratio S3 ÷ disk. The two stores must be equal (arrays compared bit for bit).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-calibration", type=int, default=48)
    a = ap.parse_args(argv)
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    import s3fs
    s3fs.S3FileSystem().mkdir("chanaxis-bench")
    import chanaxis
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from storecmp import arrays, differences
    cap = {"n_calibration": a.n_calibration, "chunk_images": 16}
    met = {"n_null": 1, "n_perm": 10, "n_triplets": 50, "geometry_images": 16}
    times = {}
    try:
        with tempfile.TemporaryDirectory(prefix="chanaxis-bench-s3-") as tmp:
            for where, run in (("disk", str(Path(tmp) / "run.zarr")), ("s3", "s3://chanaxis-bench/run.zarr")):
                model = chanaxis.load_model("test_resnet", num_classes=10, image_size=32, init_seed=0)
                t = time.perf_counter()
                chanaxis.capture(model, "synthetic", run, progress=False, **cap)
                t1 = time.perf_counter()
                chanaxis.metrics(run, progress=False, **met)
                times[where] = (t1 - t, time.perf_counter() - t1, run)
            diff = differences(arrays(times["disk"][2]), arrays(times["s3"][2]), atol=0)
    finally:
        server.stop()
    for i, stage in enumerate(("capture", "metrics")):
        d, s = times["disk"][i], times["s3"][i]
        print(f"{stage}: disk {d:.1f} s, S3 (moto, local) {s:.1f} s → S3 ÷ disk {s / d:.1f}×")
    print("stores equal bit for bit" if not diff else f"stores DIFFER: {diff[:3]}")
    if diff:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
