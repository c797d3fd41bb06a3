"""Session-scoped coordination: session, watched views, ownership, election, locks, quotas."""
