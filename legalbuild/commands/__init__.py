"""Command modules of the `legalbuild` CLI (legalbuild/cli.py holds the app and the build commands)."""
