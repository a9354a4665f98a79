"""Run one party of a TCP pipeline in its own process (for kill-and-resume tests).

    python tests/pipeline_proc.py alice LINK_DIR OUT PORTFILE [toy|real]
    python tests/pipeline_proc.py bob LINK_DIR OUT PORT [toy|real]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from qkdpost.config import Config  # noqa: E402
from qkdpost.pipeline.run import run_bob, serve_alice  # noqa: E402


def main() -> None:
    role, link, out, where = sys.argv[1:5]
    kind = sys.argv[5] if len(sys.argv) > 5 else "toy"
    kit = None
    if kind == "toy":
        from pipeline_kit import ToyKit

        kit = ToyKit()
    cfg = Config().replace(block_bits=int(os.environ.get("QKD_BLOCK_BITS", 8192)), seed=-1, timeout_s=10,
                           acquisition_s=0.5)
    if role == "alice":
        def listening(port: int) -> None:
            tmp = where + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(str(port))
            os.replace(tmp, where)

        serve_alice(os.path.join(link, "alice.arrow"), out, cfg, port=0, on_listen=listening,
                    idle_timeout_s=60, kit=kit)  # > a restarted Bob's start-up on a loaded machine
    else:
        run_bob(os.path.join(link, "bob.arrow"), out, ("127.0.0.1", int(where)), cfg, retries=20,
                retry_wait_s=0.5, kit=kit)


if __name__ == "__main__":
    main()
