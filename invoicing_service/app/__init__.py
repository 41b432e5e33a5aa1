"""Use cases of the invoicing service over its event store and its own tables."""
