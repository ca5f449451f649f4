"""A user's model package, as txbench's factory protocol sees it (see ../README.md)."""
