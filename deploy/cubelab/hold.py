"""`python -m cubelab.hold RUN_DIR`: the embedded stack's socket holder (cubelab.backends.local.sockets), which
`cubelab up` starts first and `cubelab down` stops last."""

import sys
from pathlib import Path

from cubelab.backends.local.sockets import Holder


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m cubelab.hold RUN_DIR (started by `cubelab up`)")
    Holder(Path(sys.argv[1])).run()


if __name__ == "__main__":
    main()
