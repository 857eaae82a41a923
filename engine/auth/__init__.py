"""Who may do what: the admin plane's checks (API keys and rate limits come next)."""
