"""Authentication: argon2 password hashes, JWT bearer tokens, throttling of failed logins."""
