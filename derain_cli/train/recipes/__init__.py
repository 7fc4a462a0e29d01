"""One training recipe per built-in architecture, named by its spec (``Training.recipe``); inference never imports these."""
