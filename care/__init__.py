"""Care and follow-up: rules that turn tag entries, dates and resolved complaints into tasks."""
