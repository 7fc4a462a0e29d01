"""One module per architecture; each defines ``SPEC`` (see :mod:`derain_cli.registry`)."""
