"""Training: one engine (:mod:`.engine`) driving per-architecture recipes (:mod:`.recipe`)."""
