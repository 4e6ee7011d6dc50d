"""The allocator: an organisation's service that tells its jobbers which dealers to work for
and in what shares (docs/allocator.md)."""
