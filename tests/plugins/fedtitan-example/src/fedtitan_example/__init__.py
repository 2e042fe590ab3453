"""A worked example of fedtitan plugins: one selector, one strategy (docs/extending.md)."""
