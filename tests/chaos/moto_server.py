"""moto's server with Kinesis resharding as AWS does it (:mod:`tests.faithful_kinesis`).

Run as ``python -m tests.chaos.moto_server -H 127.0.0.1 -p PORT`` (moto's own flags): the
chaos run's daemons talk to it from other processes, so the patches must live in the server's.
"""

from __future__ import annotations

import sys

from tests.faithful_kinesis import faithful_resharding

if __name__ == "__main__":
    from moto.server import main

    with faithful_resharding():
        main(sys.argv[1:])
