"""One module per built-in architecture; each registers its spec (``register_model``, :mod:`derain_cli.registry`)."""
