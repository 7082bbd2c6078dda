"""A stand-in for `python -m prefect.engine` that the engine server tests can steer by argv:
what a forked engine sees, and how it ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "report"
    if what == "report":
        print(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "ppid": os.getppid(),
                    "sid": os.getsid(0),
                    "cwd": os.getcwd(),
                    "run_id": os.environ.get("PREFECT__FLOW_RUN_ID"),
                    "argv": argv,
                }
            )
        )
        sys.stderr.write("to stderr\n")
    elif what == "exit":
        sys.exit(int(argv[1]))
    elif what == "die":
        os.kill(os.getpid(), int(argv[1]))
    elif what == "wait":
        signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(7)))
        helper = subprocess.Popen(  # a process of its own the engine leaves running
            ["sleep", "60"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        print(f"waiting {os.getpid()} {helper.pid}", flush=True)
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1:])
