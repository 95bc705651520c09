"""leadpilot: a self-hosted, AI-native sales CRM engine."""

__version__ = "0.1.0"
