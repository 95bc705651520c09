"""The server-rendered web workspace (Jinja2 templates, Plotly charts served from the installed package)."""
