"""Demo data shipped with leadpilot: a sample lead file with a few bad rows, and the demo org."""
