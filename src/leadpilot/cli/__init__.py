"""The ``leadpilot`` command line (Typer), one module per noun."""
