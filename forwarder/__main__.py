"""``python -m forwarder``: the same as the ``forwarder`` console script."""

from forwarder.cli import main

raise SystemExit(main())
