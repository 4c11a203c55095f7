"""CLI commands beyond check/compile/schema, each registering itself on specc.cli.app."""
