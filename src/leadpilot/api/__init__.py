"""The REST API: an app factory, dependencies, and one thin router per domain."""
