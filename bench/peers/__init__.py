"""``make bench-peers``: Backstock against the stateless mocks people use to fake Klaviyo."""
