"""A worked example of fedtitan plugins: one selector, one strategy (docs/extending.md) and two
models (docs/models.md)."""
