"""moto's S3 in server mode, with the buckets of S3_BUCKETS (comma-separated) made at start,
since sessionflow expects its bucket to exist. `--check`: exit 0 once every bucket answers
(the health check)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import urllib.request

PORT = int(os.environ.get("S3_PORT", "5000"))
BUCKETS = [name for name in os.environ.get("S3_BUCKETS", "").split(",") if name]


def check() -> int:
    for bucket in BUCKETS:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/{bucket}", timeout=2):
                pass
        except OSError as exc:
            print(f"bucket {bucket}: {exc}", file=sys.stderr)
            return 1
    return 0


def main() -> int:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="0.0.0.0", port=PORT)  # noqa: S104
    server.start()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{PORT}",
        region_name="us-east-1",
        aws_access_key_id="moto",
        aws_secret_access_key="moto",  # noqa: S106
    )
    for bucket in BUCKETS:
        client.create_bucket(Bucket=bucket)
    print(f"S3 on :{PORT}, buckets: {', '.join(BUCKETS) or 'none'}", flush=True)
    stop = threading.Event()
    # PID 1 ignores SIGTERM unless it handles it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(check() if sys.argv[1:] == ["--check"] else main())
