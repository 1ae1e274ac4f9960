"""Rule layer: expressions, templates and the reactive pipeline."""
