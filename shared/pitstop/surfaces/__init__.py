"""What people and machines call: the CLI (and later the API, dashboard, notifications)."""
