"""Remote CI: a small self-hosted job server for public CI pipelines."""
