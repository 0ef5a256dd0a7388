"""Command-line helpers and job submission."""
