"""The relay: a jobber to its upstream dealer, a dealer to its own jobbers (docs/federation.md)."""
